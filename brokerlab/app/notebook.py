"""Small conveniences for notebooks: find the lab's files from wherever the kernel runs.

A notebook's kernel may start in ``notebooks/``, the repository root, or a temporary folder
(papermill); parameters name paths relative to any of them. Real-broker runs need nothing here:
they work inside the kernel's running event loop on their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import brokerlab


def lab_path(path: str | Path) -> Path:
    """The first existing of: ``path`` from the kernel's folder, from ``notebooks/``, from the
    repository; a path that does not exist yet (an output) is taken from the kernel's folder."""
    given = Path(path).expanduser()
    roots = [p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir()]
    roots.append(Path(brokerlab.__file__).resolve().parents[1])  # a source checkout
    tries = [
        Path.cwd() / given,
        *(r / "notebooks" / given for r in roots),
        *(r / given for r in roots),
    ]
    return next((p for p in tries if p.exists()), tries[0]).resolve()


def results_path(results_dir: str = "") -> Path:
    """Where runs go, as for the CLI: the parameter, else ``$BROKERLAB_RESULTS``, else results/."""
    return lab_path(results_dir or os.environ.get("BROKERLAB_RESULTS") or "results")
