"""User journeys timed: every tool opened from the Plugins menu on a real file, run from its
button, beside the same work through the Python API, with the longest event-loop stall.

Runs the journey tests (tests/test_journeys_*.py) under Xvfb with MICROML_JOURNEY_REPORT set;
each journey then records its widget seconds, the API seconds of the same call and the longest
stall of a 20 ms QTimer (target ≤ 0.25 s; widget ≤ 1.3× the API). Prints one JSON object.

    python benchmarks/journeys.py [-k EXPR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STALL_TARGET_S = 0.25
RATIO_TARGET = 1.3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default=None, help="pytest -k expression to pick journeys")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "journeys.jsonl"
        env = {**os.environ, "MICROML_JOURNEY_REPORT": str(report), "QT_API": "pyqt6"}
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *sorted(str(p) for p in (ROOT / "tests").glob("test_journeys_*.py")),
        ]
        if args.k:
            cmd += ["-k", args.k]
        if not os.environ.get("DISPLAY"):
            cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", *cmd]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        rows = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report.exists()
            else []
        )
    for row in rows:
        api = row.get("api_s")
        row["widget_over_api"] = round(row["widget_s"] / api, 2) if api else None
        row["stall_ok"] = row["stall_s"] <= STALL_TARGET_S
        row["ratio_ok"] = None if not api else row["widget_over_api"] <= RATIO_TARGET
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    print(
        json.dumps(
            {
                "benchmark": "journeys",
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "targets": {"stall_s": STALL_TARGET_S, "widget_over_api": RATIO_TARGET},
                "pytest": summary,
                "journeys": rows,
            },
            indent=1,
        )
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
