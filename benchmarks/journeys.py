"""User journeys timed: every tool opened from the Plugins menu on a real file, run from its
button, beside the same work through the Python API, with the longest event-loop stall.

Runs the journey tests (tests/test_journeys_*.py) under Xvfb with MICROML_JOURNEY_REPORT set;
each journey then records its widget seconds, the API seconds of the same call and the longest
stall of a 20 ms QTimer (target ≤ 0.25 s; widget ≤ 1.3× the API). Prints one JSON object.

    python benchmarks/journeys.py [-k EXPR] [--baseline-src DIR/src --repeat N]
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


def run_journeys(k: str | None, src: str | None = None) -> tuple[list[dict], str, int]:
    """One pytest process over the journeys; ``src``: import napari_microml from that tree's
    ``src`` folder instead of the installed one (a baseline checkout beside the working tree)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "journeys.jsonl"
        env = {**os.environ, "MICROML_JOURNEY_REPORT": str(report), "QT_API": "pyqt6"}
        if src:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",  # a baseline may lack what a new test imports
            *sorted(str(p) for p in (ROOT / "tests").glob("test_journeys_*.py")),
        ]
        if k:
            cmd += ["-k", k]
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
    return rows, summary, proc.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default=None, help="pytest -k expression to pick journeys")
    parser.add_argument(
        "--baseline-src",
        default=None,
        help="src folder of a baseline checkout (e.g. git archive <rev> src | tar -x -C DIR, "
        "then DIR/src): the journeys run alternately on it and on this tree, same tests",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per tree, alternated")
    args = parser.parse_args(argv)
    arms = [("baseline", args.baseline_src), ("this tree", None)] if args.baseline_src else []
    arms = arms or [("this tree", None)]
    rows, summaries, code = [], [], 0
    for rep in range(args.repeat):
        for arm, src in arms:
            load = os.getloadavg()[0]
            arm_rows, summary, rc = run_journeys(args.k, src)
            code = code or rc
            summaries.append(f"{arm} #{rep + 1}: {summary}")
            rows += [
                {**r, "tree": arm, "run": rep + 1, "load_1min": round(load, 2)} for r in arm_rows
            ]
    print(
        json.dumps(
            {
                "benchmark": "journeys",
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "targets": {"stall_s": STALL_TARGET_S, "widget_over_api": RATIO_TARGET},
                "pytest": summaries[0] if len(summaries) == 1 else summaries,
                "journeys": rows,
            },
            indent=1,
        )
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
