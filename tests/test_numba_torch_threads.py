"""A torch job in a reused napari worker thread runs with the session's torch thread count.

torch sets a thread's OpenMP thread count once, at its first op, and two things changed it
afterwards in a pooled worker: numba's OpenMP layer, which starts once per process on the thread
that runs the first parallel kernel (the defect segmenter's label-colour warm-up) and sets that
thread's count to numba's; and a later ``torch.set_num_threads`` on another thread, which does
not reach a thread torch had already set up. Either way later jobs in that thread ran with the
wrong count (the Shift-VAE fit 2.5x slower after a defect run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, queue, threading
import numpy as np, pandas as pd, torch
from types import SimpleNamespace

torch.set_num_threads(1)
from napari_microml.defects.widget import _warm_label_colormap

labels = np.zeros((8, 8), np.int32)
labels[1:3, 1:3], labels[5:7, 4:6] = 1, 2
res = SimpleNamespace(labels=labels, table=pd.DataFrame({"label": [1, 2],
                                                         "class": ["vacancy", "dopant_bright"]}))

jobs, out = queue.Queue(), queue.Queue()
def pooled():  # one long-lived thread, reused job after job as QThreadPool does
    while True:
        out.put(jobs.get()())
threading.Thread(target=pooled, daemon=True).start()
def run(f):
    jobs.put(f)
    return out.get()

def torch_job():
    torch.ones(4).sum()
    return torch.get_num_threads()

first = run(torch_job)
run(lambda: _warm_label_colormap(res))
after = run(torch_job)

import numba
from napari.utils.colormaps import _accelerated_cmap as acc
print("RESULT " + json.dumps({
    "first": first, "after": after, "numba_threads": numba.get_num_threads(),
    "layer": numba.threading_layer(),
    "compiled": len(acc._labels_raw_to_texture_direct_inner_loop.signatures),
}))
"""


def run_with_two_numba_threads(script: str) -> dict:
    """Run ``script`` in a fresh Python (numba starts its threading layer once per process)
    with numba's count 2, which must differ from torch's 1 for a changed count to show; return
    the JSON it printed after ``RESULT ``."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "QT_API": os.environ.get("QT_API", "pyqt6")}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_label_colour_warm_up_keeps_the_worker_threads_torch_thread_count():
    result = run_with_two_numba_threads(SCRIPT)
    assert result["numba_threads"] == 2
    assert result["first"] == 1
    assert result["after"] == 1, result  # the old warm-up left 2 (numba's count) here
    assert result["compiled"] >= 1  # the warm-up still compiles the kernel the labels draw uses


class _ReusedThread:
    """One long-lived thread that runs calls handed to it, as napari reuses a worker thread."""

    def __init__(self):
        import queue
        import threading

        self._calls, self._results = queue.Queue(), queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            self._results.put(self._calls.get()())

    def __call__(self, call):
        self._calls.put(call)
        return self._results.get(timeout=60)


def test_a_job_runs_with_the_sessions_torch_thread_count_in_a_reused_thread():
    import torch

    from napari_microml.runtime.widget import Job

    def job():
        def work():
            yield ("progress", 0, 1, "")
            return torch.get_num_threads()

        gen = Job(work, lambda _: None).run()
        next(gen)
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value

    old = torch.get_num_threads()
    try:
        worker = _ReusedThread()
        torch.set_num_threads(2)
        assert worker(torch.get_num_threads) == 2  # the thread set up while the session used 2
        torch.set_num_threads(1)  # the session (here the main thread) now asks for 1
        assert worker(job) == 1  # before: 2, the count the thread was left with
    finally:
        torch.set_num_threads(old)
