"""Output helpers: atomic writes, names, colours, resume parsing."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
from PIL import Image

from winclip_cli.atomic import atomic_write
from winclip_cli.outputs import (
    COLORMAP,
    colorize,
    output_name,
    render_overlay,
)
from winclip_cli.rows import read_finished_rows


def test_atomic_write_gives_normal_permissions_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "x.png"
    atomic_write(target, lambda f: f.write(b"data"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_output_names_never_collide_and_stay_inside(tmp_path):
    names = {
        output_name(tmp_path, rel, ".png")
        for rel in ["a/x.jpg", "b/x.jpg", "a/x.png", "x.jpg", "../x.jpg"]
    }
    assert len(names) == 5
    assert all(tmp_path in n.parents for n in names)


def test_colormap_is_perceptually_ordered():
    # viridis: dark purple at 0, yellow at 1, lightness rising (up to uint8 rounding).
    luma = COLORMAP @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma[::8]) > 0) and np.all(np.diff(luma) > -1)
    # Anchor colours of matplotlib's viridis, within the polynomial fit's error.
    anchors = {0: (68, 1, 84), 64: (59, 82, 139), 128: (33, 145, 140), 255: (253, 231, 37)}
    for index, rgb in anchors.items():
        assert np.abs(COLORMAP[index].astype(int) - rgb).max() <= 4
    assert tuple(colorize(np.array([[0.0]]))[0, 0]) == tuple(COLORMAP[0])
    assert COLORMAP[0, 2] > COLORMAP[0, 1] and COLORMAP[-1, 0] > COLORMAP[-1, 2]


def test_overlay_keeps_size_and_shows_the_map():
    image = Image.new("RGB", (300, 200), (128, 128, 128))
    heat = np.zeros((200, 300))
    heat[:, 150:] = 1.0
    overlay = np.asarray(render_overlay(image, heat)).astype(int)
    assert overlay.shape == (200, 300, 3)
    left, right = overlay[50, 20], overlay[50, 200]
    assert right[0] > left[0] and right[1] > left[1]  # yellow side vs purple side


@pytest.mark.parametrize(
    ("content", "fmt", "words"),
    [
        (b"path,score,map_max,status,error\n", "csv", ["path,score,map_max", "not this run's"]),
        (b'{"path": "a.png", "score": 0.5, "status": "ok", "error": ""}\n', "csv", ["jsonl"]),
        (bytes(range(256)) * 40, "csv", ["not this run's"]),
        (b"path,score,status,error\n", "jsonl", ["line 1 is not JSON"]),
    ],
    ids=["other-columns", "jsonl-as-csv", "binary", "csv-as-jsonl"],
)
def test_resume_refuses_a_file_of_another_shape_in_one_short_line(tmp_path, content, fmt, words):
    path = tmp_path / "rows"
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        read_finished_rows(path, fmt, ["path", "score", "status", "error"])
    message = str(caught.value)
    assert all(word in message for word in words), message
    assert message.isprintable() and len(message) < 300 + len(str(path))
    assert path.read_bytes() == content, "a refused file is left as it was"


def test_a_torn_last_row_is_cut_off_in_place(tmp_path):
    """The repair keeps the file itself (same inode): the lock the run holds on it, and
    anything else pointing at it, stay valid."""
    path = tmp_path / "rows.csv"
    path.write_text("path,score,status,error\na.png,0.5,ok,\nb.png,0.2")
    inode = path.stat().st_ino
    rows = read_finished_rows(path, "csv", ["path", "score", "status", "error"])
    assert [r["path"] for r in rows] == ["a.png"]
    assert path.read_text() == "path,score,status,error\na.png,0.5,ok,\n"
    assert path.stat().st_ino == inode


def test_resume_reads_a_carriage_return_in_a_name_as_written(tmp_path):
    """The file is read as bytes: text mode turned the quoted '\\r' of a name into '\\n',
    so the row no longer matched its image, and the repair wrote the corruption back."""
    from winclip_cli.rows import Row, RowWriter, columns

    cols = columns(False, False, False)
    buffer = io.StringIO()
    writer = RowWriter(buffer, "csv", cols)
    writer.write(Row("/in/a\rb.png", 0.5))
    writer.write(Row("/in/c.png", 0.25))
    path = tmp_path / "rows.csv"
    path.write_bytes(buffer.getvalue().encode()[:-3])  # the last row torn
    rows = read_finished_rows(path, "csv", cols)
    assert [r["path"] for r in rows] == ["/in/a\rb.png"]
    assert b'"/in/a\rb.png"' in path.read_bytes()
