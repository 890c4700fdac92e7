"""File lists as inputs (issue 17): `-` reads paths from stdin, `-0` NUL-separated ones,
and with no PATH a piped stdin is the list (as ripgrep does); the folder otherwise."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from winclip_cli.data import find_images
from winclip_cli.errors import UsageError
from winclip_cli.pathlists import (
    EMPTY_LIST,
    parse_path_list,
    read_path_list,
    resolve_inputs,
    stdin_holds_a_list,
)


class FakeStdin(io.BytesIO):
    """A stdin whose descriptor is some real file (a pipe, a terminal, /dev/null)."""

    def __init__(self, data: bytes, fd: int | None) -> None:
        super().__init__(data)
        self._fd = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise io.UnsupportedOperation("fileno")
        return self._fd


@pytest.fixture()
def pipe_fd():
    read_end, write_end = os.pipe()
    os.close(write_end)
    yield read_end
    os.close(read_end)


def test_lines_and_nul_separated_lists_keep_order_and_bytes():
    assert parse_path_list(b"b.jpg\na.jpg\r\n\nsub/c.png\n") == [
        Path("b.jpg"),
        Path("a.jpg"),
        Path("sub/c.png"),
    ]
    odd = b"new\nline.jpg\0 space .png\0\xff.jpg\0"
    names = [str(p) for p in parse_path_list(odd, null=True)]
    assert names == ["new\nline.jpg", " space .png", os.fsdecode(b"\xff.jpg")]
    assert read_path_list(io.TextIOWrapper(io.BytesIO(b"x.png\n"))) == [Path("x.png")]


def test_what_counts_as_a_piped_stdin(tmp_path, pipe_fd):
    assert stdin_holds_a_list(FakeStdin(b"", pipe_fd))
    with open(tmp_path / "list.txt", "wb") as regular:
        assert stdin_holds_a_list(regular)
    with open(os.devnull, "rb") as null:
        assert not stdin_holds_a_list(null)
    assert not stdin_holds_a_list(FakeStdin(b"a.jpg\n", None))  # no descriptor
    assert not stdin_holds_a_list(None)


def test_no_path_reads_a_piped_list_else_the_current_folder(pipe_fd):
    piped = resolve_inputs(None, FakeStdin(b"b.jpg\na.jpg\n", pipe_fd))
    assert piped.paths == [Path("b.jpg"), Path("a.jpg")] and piped.from_stdin
    assert piped.listed == {Path("a.jpg"), Path("b.jpg")}
    with open(os.devnull, "rb") as null:
        assert resolve_inputs([], null).paths == [Path(".")]
    # Given PATHs: stdin is not read, even when piped.
    assert resolve_inputs(["x.png"], FakeStdin(b"a.jpg\n", pipe_fd)).paths == [Path("x.png")]


def test_an_empty_list_is_a_usage_error_that_names_the_dot(pipe_fd):
    with pytest.raises(UsageError) as caught:
        resolve_inputs(None, FakeStdin(b"\n\n", pipe_fd))
    assert str(caught.value) == EMPTY_LIST and "pass . " in EMPTY_LIST
    with pytest.raises(UsageError, match=r"pass \. "):
        resolve_inputs(["-"], FakeStdin(b"", None))


def test_dash_takes_its_place_among_paths_and_null_needs_a_list(pipe_fd):
    mixed = resolve_inputs(["first.png", "-", "last.png"], FakeStdin(b"a\0b\0", None), null=True)
    assert [str(p) for p in mixed.paths] == ["first.png", "a", "b", "last.png"]
    assert mixed.listed == {Path("a"), Path("b")}
    with pytest.raises(UsageError, match="twice"):
        resolve_inputs(["-", "-"], FakeStdin(b"a\n", None))
    with pytest.raises(UsageError, match="--null"):
        resolve_inputs(["x.png"], FakeStdin(b"", None), null=True)
    with open(os.devnull, "rb") as null, pytest.raises(UsageError, match="--null"):
        resolve_inputs(None, null, null=True)


def test_listed_files_keep_order_once_each_and_a_missing_one_is_an_input(tmp_path):
    for name in ("a.png", "b.png", "dir/c.png", "dir/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    listed = [
        tmp_path / "b.png",
        tmp_path / "gone.png",
        tmp_path / "dir",
        tmp_path / "a.png",
        tmp_path / "dir" / ".." / "b.png",  # the same file again: once
    ]
    found = find_images(listed, missing_ok=set(listed))
    names = [Path(im.display).name for im in found]
    assert names == ["b.png", "gone.png", "c.png", "d.png", "a.png"]
    with pytest.raises(FileNotFoundError):  # named on the command line: a usage error
        find_images(listed)


def test_a_real_pipe_reaches_the_rule(tmp_path):
    """The rule on a real process's stdin: a pipe is a list, /dev/null is not."""
    code = (
        "import sys; from winclip_cli.pathlists import resolve_inputs;"
        "print([str(p) for p in resolve_inputs(None, sys.stdin).paths])"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = [sys.executable, "-c", code]
    piped = subprocess.run(run, input=b"z.png\ny.png\n", capture_output=True, env=env)
    assert piped.stdout.decode().strip() == "['z.png', 'y.png']", piped.stderr
    nothing = subprocess.run(run, stdin=subprocess.DEVNULL, capture_output=True, env=env)
    assert nothing.stdout.decode().strip() == "['.']", nothing.stderr
