"""Packaging stays honest: conda env, docs and CI follow pyproject, the models and the README."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from pydantic import BaseModel

from brokerlab.core import scenario as scenario_module

ROOT = Path(__file__).resolve().parent.parent


def _requirement(spec: str) -> tuple[str, str | None]:
    """Split 'pandas>=2.1' into ('pandas', '2.1'); names normalised the PyPI way."""
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][^,;\s]*))?", spec)
    assert match, spec
    return re.sub(r"[-_.]+", "-", match.group(1)).lower(), match.group(2)


def test_environment_yml_in_step_with_pyproject() -> None:
    """Conda packages carry pyproject's lower bounds, and pip installs the lab itself."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_requirement(spec) for spec in project["dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(line.startswith("-e .") for line in pip), "the conda env must install the lab"
    python = next(d for d in conda if d.startswith("python="))
    assert project["requires-python"] == ">=" + python.split("=")[1]
    for spec in conda:
        name, bound = _requirement(spec)
        if name in wanted:
            assert bound == wanted[name], (
                f"{name}: environment.yml >={bound}, pyproject >={wanted[name]}"
            )
    for name in ("jupyterlab", "simpy", "pandas", "matplotlib"):
        assert name in {_requirement(s)[0] for s in conda}, f"{name} missing from environment.yml"


def _models() -> list[type[BaseModel]]:
    return [
        obj
        for obj in vars(scenario_module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == scenario_module.__name__
    ]


def test_reference_page_lists_every_scenario_field() -> None:
    """docs/scenarios.md names every field a scenario accepts, so the reference cannot drift."""
    page = (ROOT / "docs" / "scenarios.md").read_text()
    missing = [
        f"{model.__name__}.{field}"
        for model in _models()
        for field in model.model_fields
        if f"`{field}`" not in page
    ]
    assert not missing, f"fields missing from docs/scenarios.md: {missing}"


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    match = re.search(r"```bash\n(.*?)\n```", after, re.S)
    assert match, marker
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run executes exactly the README's test command (it extracts the same block)."""
    command = _readme_block("test-command")
    assert "pytest" in command
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"command=\$\((awk .*?)\)\n", script).group(1)
    found = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True)
    assert found.stdout.strip() == command
