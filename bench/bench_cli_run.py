"""Wall time of the whole `brokerlab run scenarios/mm1.yaml --target sim` command.

It includes everything a user waits for: start-up and imports, the 500,000-message simulation,
the analysis, writing the trace as Parquet and metrics.json. The goal is under 10 s. Prints the
median of several runs; the machine is shared, so read figures from one run side by side.

    python bench/bench_cli_run.py [--repeat 3] [--scenario scenarios/mm1.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "mm1.yaml"))
    args = parser.parse_args()
    walls = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.repeat):
            command = [sys.executable, "-m", "brokerlab.cli", "run", args.scenario, "-q"]
            command += ["--target", "sim", "--out", str(Path(scratch, f"run{index}"))]
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
    print(
        f"brokerlab run {Path(args.scenario).name} --target sim: "
        + ", ".join(f"{w:.2f}" for w in walls)
    )
    print(
        f"median wall time {statistics.median(walls):.2f} s over {args.repeat} runs (goal < 10 s)"
    )


if __name__ == "__main__":
    main()
