"""File lists from pipes, end to end (issue 17): `find ... | winclip score`, `winclip
score - < list` and `find -print0 | winclip score -0` score exactly the listed files; an
empty pipe (cron) is exit 2; a missing listed file is an error row; shards, --resume and
--no-header work on a list as on a folder."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PARTS, WINCLIP, Outcome, process_env, read_csv, run_runner


def piped(command: str, cwd: Path, stdin: int | None = subprocess.DEVNULL) -> Outcome:
    """A shell pipeline where ``winclip`` is this venv's console script."""
    proc = subprocess.run(
        ["sh", "-c", command.replace("winclip ", f"{shlex.quote(str(WINCLIP))} ")],
        cwd=cwd,
        env=process_env(),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture()
def parts(tmp_path) -> Path:
    """parts/ (good, local, global: 3 JPEGs each) and last run's overlays beside it."""
    root = tmp_path / "parts"
    shutil.copytree(PARTS, root)
    (tmp_path / "winclip-out" / "parts").mkdir(parents=True)
    shutil.copy(root / "good" / "textile_0901.jpg", tmp_path / "winclip-out" / "parts" / "x.png")
    return root


def listed(parts: Path) -> list[str]:
    return sorted(str(p.relative_to(parts.parent)) for p in parts.rglob("*.jpg"))


def test_find_piped_into_score_scores_exactly_the_listed_files(parts, model, tmp_path):
    opts = " ".join(shlex.quote(o) for o in model)
    out = piped(f"find parts -name '*.jpg' | sort -r | winclip score {opts}", tmp_path)
    assert out.code == 0, out.stderr
    paths = [r["path"] for r in read_csv(out.stdout)[1]]
    assert paths == sorted(listed(parts), reverse=True)  # in the order given, nothing else


def test_dash_reads_the_list_from_a_file_and_null_from_print0(parts, model, tmp_path):
    opts = " ".join(shlex.quote(o) for o in model)
    names = listed(parts)[:4]
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    out = piped(f"winclip score - {opts} < list.txt", tmp_path)
    assert out.code == 0, out.stderr
    assert [r["path"] for r in read_csv(out.stdout)[1]] == names
    odd = parts / "good" / "new\nline.jpg"
    shutil.copy(parts / "good" / "textile_0901.jpg", odd)
    out = piped(f"find parts/good -name '*.jpg' -print0 | winclip score -0 {opts}", tmp_path)
    assert out.code == 0, out.stderr
    paths = [r["path"] for r in read_csv(out.stdout)[1]]
    assert sorted(paths) == sorted(str(p.relative_to(tmp_path)) for p in parts.glob("good/*"))
    assert "parts/good/new\nline.jpg" in paths


def test_an_empty_pipe_is_exit_2_and_says_to_pass_a_dot(parts, model, tmp_path):
    opts = " ".join(shlex.quote(o) for o in model)
    out = piped(f"true | winclip score {opts}", tmp_path)
    assert out.code == 2 and out.stdout == ""
    assert "pass . " in out.stderr and "Traceback" not in out.stderr
    dot = piped(f"true | winclip score . {opts}", tmp_path)
    assert dot.code == 0, dot.stderr
    nothing_piped = piped(f"winclip score {opts}", parts / "good", stdin=subprocess.DEVNULL)
    assert nothing_piped.code == 0, nothing_piped.stderr  # /dev/null: the current folder
    assert len(read_csv(nothing_piped.stdout)[1]) == 3


def test_listed_order_once_each_folders_walked_missing_ones_are_error_rows(parts, model):
    lines = [
        "parts/local/textile_0002.jpg",
        "parts/gone.jpg",
        "parts/good",
        "./parts/local/textile_0002.jpg",  # the same file again: once
    ]
    out = run_runner(["score", "-", *model], cwd=parts.parent, stdin="\n".join(lines))
    assert out.code == 3, out.stderr
    rows = read_csv(out.stdout)[1]
    good = sorted(str(p.relative_to(parts.parent)) for p in (parts / "good").glob("*.jpg"))
    assert [r["path"] for r in rows] == [lines[0], lines[1], *good]
    assert rows[1]["status"] == "error" and "not found" in rows[1]["error"]
    assert all(r["status"] == "ok" for r in rows if r is not rows[1])


def test_shards_and_resume_work_on_a_list(parts, model, tmp_path):
    names = "\n".join(sorted(listed(parts), reverse=True))
    whole = run_runner(["score", "-", *model], cwd=tmp_path, stdin=names)
    assert whole.code == 0, whole.stderr
    body = whole.stdout.splitlines(keepends=True)[1:]
    shards = []
    for i in (1, 2, 3):
        part = run_runner(["score", "-", "--shard", f"{i}/3", *model], cwd=tmp_path, stdin=names)
        assert part.code == 0, part.stderr
        shards += part.stdout.splitlines(keepends=True)[1:]
    assert shards == body
    rows = tmp_path / "rows.csv"
    first = "\n".join(names.splitlines()[:4])
    assert run_runner(["score", "-", "-o", rows, *model], cwd=tmp_path, stdin=first).code == 0
    again = run_runner(["score", "-", "-o", rows, "--resume", *model], cwd=tmp_path, stdin=names)
    assert again.code == 0, again.stderr
    assert "4 row(s) already written, 5 to go" in again.stderr
    assert rows.read_text().splitlines(keepends=True)[1:] == body


def test_no_header_leaves_the_csv_header_out_for_appended_batches(parts, model, tmp_path):
    rows = tmp_path / "all.csv"
    names = listed(parts)
    for batch in (names[:5], names[5:]):
        out = run_runner(["score", *batch, "--no-header", *model], cwd=tmp_path)
        assert out.code == 0, out.stderr
        with rows.open("a") as f:
            f.write(out.stdout)
    lines = rows.read_text().splitlines()
    assert len(lines) == 9 and not any(line.startswith("path,") for line in lines)
    assert [line.split(",")[0] for line in lines] == names


def test_a_list_never_reaches_the_runs_own_stdin_by_accident(parts, model, tmp_path):
    """Given PATHs, a piped stdin is not read (a job's stdin is not its input)."""
    opts = " ".join(shlex.quote(o) for o in model)
    out = piped(f"echo parts/gone.jpg | winclip score parts/good {opts}", tmp_path)
    assert out.code == 0, out.stderr
    assert len(read_csv(out.stdout)[1]) == 3
    assert os.path.isdir(tmp_path / "parts")
