"""The house: one installed package, layers the code cannot break, no second copy of a module."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as users install it (a wheel), unpacked."""
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves a build/ folder in the tree it builds.
    source = out / "source"
    skip = shutil.ignore_patterns(".*", "build", "results", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT, source, ignore=skip)
    subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("brokerlab-*.whl")
    site = out / "site"
    with zipfile.ZipFile(built) as archive:
        archive.extractall(site)
    return site


def test_the_wheels_only_top_level_package_is_brokerlab(wheel: Path) -> None:
    """sim/ and adapters/ install as brokerlab.sim and brokerlab.adapters, never top level."""
    packages = {p.name for p in wheel.iterdir() if not p.name.endswith(".dist-info")}
    assert packages == {"brokerlab"}
    for sub in ("core", "app", "sim", "sim/models", "adapters"):
        assert (wheel / "brokerlab" / sub / "__init__.py").is_file(), sub
    assert (wheel / "brokerlab" / "sim" / "presets.yaml").is_file()


def lint_imports(site: Path) -> subprocess.CompletedProcess[str]:
    """import-linter's verdict on the package unpacked in ``site``: the editable install maps
    sim/ and adapters/ from outside brokerlab/, which import-linter cannot walk."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), str(ROOT / "pyproject.toml")],
        cwd=site.parent,
        env={"PYTHONPATH": str(site), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
    )


def test_import_linter_layers_hold(wheel: Path) -> None:
    """cli -> app -> sim | adapters -> core, and no import cycles."""
    done = lint_imports(wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


def test_a_broken_layer_is_caught(wheel: Path) -> None:
    """The contract can fail: a core module importing the application layer breaks it."""
    units = wheel / "brokerlab" / "core" / "units.py"
    text = units.read_text()
    units.write_text(text + "\nimport brokerlab.app.runner  # noqa\n")
    try:
        done = lint_imports(wheel)
    finally:
        units.write_text(text)
    assert done.returncode != 0 and "BROKEN" in done.stdout


@pytest.mark.parametrize("name", ["sim", "sim.engine", "adapters", "adapters.embedded"])
def test_folders_cannot_be_imported_by_their_folder_names(name: str) -> None:
    """From the repository root, `import sim` fails loudly instead of loading a second copy."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert f"installs as brokerlab.{name.split('.')[0]}" in done.stderr


def test_no_module_imports_sim_or_adapters_by_folder_name() -> None:
    """Every import of the simulator and adapters goes through brokerlab (ruff's TID251 too)."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if any(part in (".venv", "build") or part.startswith(".") for part in path.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("sim", "adapters"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []
