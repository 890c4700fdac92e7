"""The lineage a calibration keeps of each `review apply`: the old file's fingerprint,
the verdict files' hashes, every verdict, and each image added and how (WINCLIP.md,
"Review verdicts taught back"). Plain JSON records, oldest first."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .calibration import Calibration
from .manifest import digest_of
from .verdicts import VerdictSet
from .version import __version__


def added_before(cal: Calibration) -> dict[str, str]:
    """Content hash -> how, of the images earlier `review apply` runs added."""
    return {
        entry["sha256"]: str(entry.get("how", "?"))
        for record in cal.lineage
        for entry in record.get("added", [])
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
    }


def lineage_record(
    into: str,
    source: Path,
    old: Calibration,
    old_sha256: str,
    verdicts: VerdictSet,
    added: list[tuple[str, str]],
    skipped: list[str],
    rate: float | None = None,
) -> dict[str, Any]:
    """What one `review apply` did, for the new file's lineage: ``into`` bank or
    calibration, the old file (``source``, its sha256), the verdicts, the images
    ``added`` (path, sha256), the notes on those ``skipped``, and for ``into`` calibration
    the ``rate`` whose threshold the added images were above."""
    record: dict[str, Any] = {
        "command": "review apply",
        "winclip": __version__,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "into": into,
        "from": {
            "file": str(source),
            "sha256": old_sha256,
            "settings": digest_of(old.settings),
            "n": old.n,
            "mode": old.settings.get("mode"),
        },
        "verdict_files": [{"file": str(f.path), "sha256": f.sha256} for f in verdicts.files],
        "verdicts": [
            {
                "path": v.path,
                "verdict": v.verdict,
                "note": v.note,
                "reviewed_at": None if v.reviewed_at is None else v.reviewed_at.isoformat(),
            }
            for v in verdicts.by_path.values()
        ],
        "added": [{"path": path, "sha256": digest, "how": into} for path, digest in added],
        "skipped": list(skipped),
    }
    if into == "calibration":
        record["false_alarm_rate"] = rate
    if into == "bank" and old.bank is None and added:
        record["mode_change"] = "zero-shot -> few-shot (WinCLIP+): runs now use the bank"
    return record
