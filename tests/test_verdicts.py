"""Verdict files (the report's `verdicts.csv`): the schema, its one-line errors naming the
file, line and field, and how several files combine."""

from __future__ import annotations

from pathlib import Path

import pytest

from winclip_cli.verdicts import (
    VERDICT_COLUMNS,
    VerdictFileError,
    read_verdict_file,
    read_verdicts,
)

HEADER = ",".join(VERDICT_COLUMNS)


def write(path: Path, *lines: str, newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join([HEADER, *lines]) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_the_exported_format_reads_back_exactly(tmp_path):
    path = write(
        tmp_path / "verdicts.csv",
        'parts/a b.png,false_alarm,0.812345,anomalous,0.02,"glare, ""again""\non the lid",'
        "2026-12-02T10:00:00.000Z",
        "parts/c.png,defect,0.9,anomalous,0.01,,2026-12-02T10:01:00+01:00",
        "",
        newline="\r\n",
        bom=True,
    )
    vf = read_verdict_file(path)
    assert [v.path for v in vf.verdicts] == ["parts/a b.png", "parts/c.png"]
    first = vf.verdicts[0]
    assert first.verdict == "false_alarm" and first.score == 0.812345 and first.p_value == 0.02
    assert first.note == 'glare, "again"\non the lid'  # a note is kept as written
    assert first.reviewed_at is not None and first.reviewed_at.year == 2026
    assert len(vf.sha256) == 64


def test_only_path_and_verdict_are_required(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("verdict,path,extra\ndefect,x.png,ignored\n")
    (verdict,) = read_verdict_file(path).verdicts
    assert verdict.path == "x.png" and verdict.score is None and verdict.note == ""


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("a.png,maybe,0.5,anomalous,0.1,,", "line 2: field 'verdict'"),
        ("a.png,defect,high,anomalous,0.1,,", "line 2: field 'score'"),
        ("a.png,defect,nan,anomalous,0.1,,", "line 2: field 'score'"),
        ("a.png,defect,0.5,anomalous,0,,", "line 2: field 'p_value': must be a p-value"),
        ("a.png,defect,0.5,anomalous,0.1,,yesterday", "line 2: field 'reviewed_at'"),
        (",defect,0.5,anomalous,0.1,,", "line 2: field 'path': must name an image"),
        ("a.png,defect", "line 2 has 2 fields, the header 7"),
    ],
)
def test_a_bad_field_names_file_line_and_field(tmp_path, line, says):
    path = write(tmp_path / "bad.csv", line)
    with pytest.raises(VerdictFileError) as caught:
        read_verdict_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "empty file"),
        (b"path,score\nx.png,0.5\n", "no 'verdict' column"),
        (b"path,verdict\n\xff\xfe.png,defect\n", "not UTF-8"),
    ],
)
def test_files_that_are_not_verdict_files(tmp_path, content, says):
    path = tmp_path / "v.csv"
    path.write_bytes(content)
    with pytest.raises(VerdictFileError, match=says):
        read_verdict_file(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(VerdictFileError, match="not found"):
        read_verdicts([tmp_path / "nope.csv"])


def test_a_file_given_twice_is_read_once_with_a_note(tmp_path):
    one = write(tmp_path / "one.csv", "a.png,false_alarm,,,,,")
    copy = tmp_path / "copy.csv"
    copy.write_bytes(one.read_bytes())
    verdicts = read_verdicts([one, copy, one])
    assert [f.path for f in verdicts.files] == [one]
    assert len(verdicts.notes) == 2 and all("the same file as" in n for n in verdicts.notes)
    assert list(verdicts.by_path) == ["a.png"]


def test_files_that_agree_combine_and_files_that_disagree_are_refused(tmp_path):
    monday = write(tmp_path / "monday.csv", "a.png,false_alarm,,,,,", "b.png,defect,,,,,")
    tuesday = write(tmp_path / "tuesday.csv", "./a.png,false_alarm,,,,,", "c.png,defect,,,,,")
    verdicts = read_verdicts([monday, tuesday])
    assert sorted(verdicts.by_path) == ["a.png", "b.png", "c.png"]
    assert verdicts.sources["a.png"] == [monday, tuesday]
    assert [v.path for v in verdicts.with_verdict("defect")] == ["b.png", "c.png"]
    wednesday = write(tmp_path / "wednesday.csv", "a.png,defect,,,,,")
    with pytest.raises(VerdictFileError) as caught:
        read_verdicts([monday, tuesday, wednesday])
    message = str(caught.value)
    assert "disagree on a.png" in message
    assert str(monday) in message and str(wednesday) in message


def test_one_file_that_contradicts_itself_is_refused(tmp_path):
    path = write(tmp_path / "v.csv", "a.png,false_alarm,,,,,", "a.png,defect,,,,,")
    with pytest.raises(VerdictFileError, match=r"disagree on a\.png"):
        read_verdicts([path])
