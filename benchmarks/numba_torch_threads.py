"""A torch fit in a reused worker thread after napari's numba label kernels ran there.

Each case runs in a fresh Python (numba starts its threading layer once per process), with one
torch thread (the journeys' setting). One long-lived thread stands in for napari's QThreadPool
thread: it fits the Shift-VAE on LSMO low-loss (synthetic peaks if the data is absent), then
runs the label-colour warm-up, then fits again; a fresh thread fits last. Three cases,
alternated run by run:

- ``kernel_in_worker``: napari's kernel run straight in the worker (the segmenter's warm-up
  before numba's start was moved off the worker thread),
- ``warm_label_colormap``: ``defects.widget._warm_label_colormap`` as shipped,
- ``no_warm_up``: no warm-up (what the warm-up saves the first labels draw).

Prints one JSON object: per case and run the fit seconds (wall and thread CPU) before and after
the warm-up, the fresh-thread fit, torch's thread count in the worker after the warm-up, the
first label-colour mapping on the main thread (the first labels draw's numba cost), and the
load (``os.getloadavg``).

    python benchmarks/numba_torch_threads.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = ("kernel_in_worker", "warm_label_colormap", "no_warm_up")

CHILD = r"""
import json, os, queue, sys, threading, time
from types import SimpleNamespace
import numpy as np, pandas as pd, torch

torch.set_num_threads(1)
from napari_microml.defects.widget import _warm_label_colormap, class_colormap
from napari_microml.spectra.shift_vae import fit_shift_vae

CASE, PATH = sys.argv[1], sys.argv[2]
if os.path.exists(PATH):
    from napari_microml.io.reader import read_file
    data, kw, _ = read_file(PATH)[0]
    sa = kw["metadata"]["napari_microml"]["spectral_axis"]
    X = np.asarray(data, np.float32).reshape(-1, data.shape[-1])
    axis = sa["offset"] + sa["scale"] * np.arange(X.shape[-1])
    from napari_microml.spectra.preprocess import auto_window
    win = auto_window(X, axis, units=sa.get("units", "eV"))  # the widget's window
    window = (win.start, win.stop)
else:
    window = None
    axis = np.linspace(-5, 5, 256)
    centres = np.random.default_rng(0).normal(0, 0.3, 100)
    X = np.exp(-((axis[None] - centres[:, None]) ** 2) / 0.5).astype(np.float32)

labels = np.zeros((8, 8), np.int32)
labels[1:3, 1:3], labels[5:7, 4:6] = 1, 2
res = SimpleNamespace(labels=labels, table=pd.DataFrame({"label": [1, 2],
                                                         "class": ["vacancy", "dopant_bright"]}))

def fit():
    t, c = time.perf_counter(), time.thread_time()
    fit_shift_vae(X, axis=axis, channel_range=window, seed=0)
    return {"wall_s": round(time.perf_counter() - t, 3), "cpu_s": round(time.thread_time() - c, 3)}

def kernel_in_worker():
    class_colormap(res.table).map(np.resize(labels.reshape(-1)[:16], 16).reshape(4, 4))

warm = {"kernel_in_worker": kernel_in_worker, "no_warm_up": lambda: None,
        "warm_label_colormap": lambda: _warm_label_colormap(res)}[CASE]
jobs, out = queue.Queue(), queue.Queue()
def pooled():
    while True:
        out.put(jobs.get()())
threading.Thread(target=pooled, daemon=True).start()
def in_worker(f):
    jobs.put(f)
    return out.get()

fit()  # first-call costs (imports, allocator) out of the timings
before = in_worker(fit)
in_worker(warm)
after = in_worker(fit)
threads_after = in_worker(torch.get_num_threads)
box = []
fresh = threading.Thread(target=lambda: box.append(fit()))
fresh.start(); fresh.join()
t = time.perf_counter()
class_colormap(res.table).map(labels)  # what the first draw of the labels layer runs
first_map_s = round(time.perf_counter() - t, 3)
print("RESULT " + json.dumps({"before": before, "after": after, "fresh_thread": box[0],
                              "worker_torch_threads_after": threads_after,
                              "first_colour_map_on_main_s": first_map_s,
                              "load": [round(v, 2) for v in os.getloadavg()]}))
"""


def _one(case: str) -> dict:
    path = DATA / "spectra" / "LSMO_linescan_low_loss.hspy"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(lines[-1].removeprefix("RESULT "))


def _spread(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case, alternated")
    args = parser.parse_args(argv)
    runs: dict[str, list] = {c: [] for c in CASES}
    for _ in range(args.repeats):
        for case in CASES:
            runs[case].append(_one(case))
    summary = {}
    for case, rows in runs.items():
        summary[case] = {
            f"after_over_before_{kind}": _spread(
                [r["after"][f"{kind}_s"] / r["before"][f"{kind}_s"] for r in rows]
            )
            for kind in ("wall", "cpu")
        }
        summary[case] |= {
            "worker_torch_threads_after": sorted({r["worker_torch_threads_after"] for r in rows}),
            "first_colour_map_on_main_s": [r["first_colour_map_on_main_s"] for r in rows],
        }
    print(
        json.dumps(
            {
                "benchmark": "numba_torch_threads",
                "cpus": os.cpu_count(),
                "data": "LSMO_linescan_low_loss.hspy"
                if (DATA / "spectra" / "LSMO_linescan_low_loss.hspy").exists()
                else "synthetic peaks",
                "summary": summary,
                "runs": runs,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
