"""The layers contract (pyproject.toml, run by `lint-imports` in .ci/run): the package as
it is keeps it, and one upward import, even one hidden inside a function, breaks it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the copy of the package under ``root`` (its own pyproject)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True
    )


def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(
        REPO / "winclip_cli", root / "winclip_cli", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


@pytest.fixture(scope="module")
def lint_imports_available() -> None:
    if not Path(LINT_IMPORTS).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")


def test_the_package_keeps_its_layers(tmp_path: Path, lint_imports_available: None) -> None:
    result = _lint_imports(_copy_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("scoring.py", "from .pipeline import execute"),  # a pure part reaching the top
        ("engines/local.py", "from ..planning import Plan"),  # an engine reading the Plan
        ("planning.py", "from .commands.run import run"),  # planning calling a command
    ],
)
def test_an_upward_import_breaks_the_layers(
    tmp_path: Path, lint_imports_available: None, module: str, upward: str
) -> None:
    root = _copy_package(tmp_path)
    target = root / "winclip_cli" / module
    # Inside a function, where a cycle used to be hidden: it counts all the same.
    target.write_text(target.read_text() + f"\n\ndef _sneaky() -> None:\n    {upward}  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0, result.stdout
    assert "0 kept, 1 broken" in result.stdout
    assert "is not allowed to import" in result.stdout


def test_every_module_has_a_layer() -> None:
    """A module in no layer escapes the contract: each new one must be placed."""
    text = (REPO / "pyproject.toml").read_text()
    listed = set(re.findall(r"winclip_cli(?:\.\w+)+", text.split("[tool.importlinter]")[1]))
    package = REPO / "winclip_cli"
    for path in package.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name == "winclip_cli":
            continue
        covered = any(name == m or name.startswith(m + ".") for m in listed)
        assert covered, f"{name} is in no layer of pyproject.toml's import contract"
