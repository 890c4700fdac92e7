"""The report's review verdicts: the script and style (package data in report_assets/)
and the data they read, embedded in the page.

htmlreport.py adds three things to the page: ``VERDICT_CSS`` in a <style>, and before its
own script ``verdict_data(rows, run_info)`` (a JSON block the browser never runs) and
``VERDICT_SCRIPT``; the page's Content-Security-Policy names both by hash. The data holds
each row's path exactly as the rows file has it (the exported ``verdicts.csv`` must name
it so) and the run id the browser keeps the verdicts under.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import resources

__all__ = ["VERDICT_CSS", "VERDICT_SCRIPT", "run_key", "verdict_data"]

RUN_ID_KEYS = ("run id", "run_id")  # what a run's header may call its id (logs, manifest)
DATA_FIELDS = ("path", "score", "label", "p_value", "status")


_ASSETS = resources.files("winclip_cli") / "report_assets"
VERDICT_SCRIPT = (_ASSETS / "verdicts.js").read_text(encoding="utf-8")
VERDICT_CSS = (_ASSETS / "verdicts.css").read_text(encoding="utf-8")


def run_key(rows: Sequence[Mapping[str, str]], run_info: Mapping[str, str] | None) -> str:
    """The id verdicts are kept under in the browser: the run's own id when its header
    has one, else a hash of the rows' paths and scores (the same rows, rebuilt into a
    report again, keep their verdicts)."""
    for key in RUN_ID_KEYS:
        if run_info and run_info.get(key):
            return str(run_info[key])
    listing = [[row.get("path", ""), row.get("score", "")] for row in rows]
    text = json.dumps(listing, ensure_ascii=True)  # lone surrogates from odd names: escaped
    return "rows-" + hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _script_safe(text: str) -> str:
    """JSON that cannot end its <script> element early or open a comment in it."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def verdict_data(
    rows: Sequence[Mapping[str, str]], run_info: Mapping[str, str] | None = None
) -> str:
    """The JSON block the verdict script reads: the run id and, by row number, each
    row's path, score, label, p-value and status, as the rows file has them."""
    listing = [[str(row.get(name, "") or "") for name in DATA_FIELDS] for row in rows]
    payload = json.dumps({"run": run_key(rows, run_info), "rows": listing}, ensure_ascii=True)
    return f'<script type="application/json" id="verdict-data">{_script_safe(payload)}</script>'
