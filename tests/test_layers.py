"""The code's layout is a contract: layers import only downward, runtime and train never import each other, no
import circles between the modules of a package (import-linter, configured in pyproject.toml). Breaking it on
purpose must fail the check."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layer_contract_holds():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.fixture
def copy_of_the_package(tmp_path):
    shutil.copytree(ROOT / "prunecli", tmp_path / "prunecli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, line, broken", [
    ("core/errors.py", "import prunecli.cli.app", "prunecli.core is not allowed to import prunecli.cli"),
    ("runtime/export.py", "import prunecli.train.finetune", "runtime and train are independent BROKEN"),
    ("core/registry.py", "import prunecli.core.outputs", "No import circles between the modules of a package BROKEN"),
])
def test_an_import_against_the_layers_fails_the_check(copy_of_the_package, module, line, broken):
    path = copy_of_the_package / "prunecli" / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    if module == "core/registry.py":  # outputs imports registry's neighbour errors; make it a real circle
        outputs = copy_of_the_package / "prunecli" / "core" / "outputs.py"
        outputs.write_text(outputs.read_text() + "\nimport prunecli.core.registry  # added by the test\n")
    result = lint(copy_of_the_package)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout


def test_the_top_level_shows_the_layers_and_modules_stay_small():
    entries = sorted(p.name for p in (ROOT / "prunecli").iterdir() if p.name != "__pycache__")
    assert entries == ["__init__.py", "__main__.py", "artifacts", "cli", "core", "graph", "models", "pipeline", "plan",
                       "runtime", "train"]
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "prunecli").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}


def test_every_package_is_packaged():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "prunecli").rglob("__init__.py")}
    assert on_disk <= packages
    assert all((ROOT / "prunecli").joinpath(*p.split(".")[1:]).is_dir() for p in packages if p != "prunecli.presets")
