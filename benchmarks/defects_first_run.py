"""The Defect segmenter's first Run in a fresh napari, with and without the dock's preparation.

Each run is a fresh Python (the costs are once per process): open the Pt 021 HAADF image through
our reader, open the dock the Plugins way, wait ``--pause`` s (the user picking the settings),
press Run and wait for the result, then time the same work through the API (segment_defects +
classify_environments, warm by then). The baseline arm replaces the dock's
``_prepare_first_run`` with a no-op (the dock before it); arms alternate. Prints one JSON object:
per run the widget s, API s, the longest event-loop stall during the run and while waiting, and
the worker's phases (segmentation, environments, label-colour warm-up, layers).

    python benchmarks/defects_first_run.py [--repeats 3] [--pause 0 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "data" / "atoms_pt_haadf" / "images"

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import napari, npe2
from qtpy.QtWidgets import QApplication
sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
from journey import StallMonitor
import napari_microml as mm
import napari_microml.defects.widget as dw
from napari_microml.runtime.widget import pixel_size_nm

arm, pause, path = sys.argv[2], float(sys.argv[3]), sys.argv[4]
if arm == "baseline":
    dw._prepare_first_run = lambda: None
marks, clicked = {}, [0.0]
def timed(name, gen_fn):
    def wrapped(*a, **k):
        start = time.perf_counter()
        marks.setdefault("until_" + name, round(start - clicked[0], 3))
        result = yield from gen_fn(*a, **k)
        marks[name] = round(time.perf_counter() - start, 3)
        return result
    return wrapped
dw.segment_defects_iter = timed("segment_s", dw.segment_defects_iter)
dw.classify_environments_iter = timed("environments_s", dw.classify_environments_iter)
warm = dw._warm_label_colormap
def warm_timed(res):
    start = time.perf_counter(); warm(res)
    marks["colour_warm_up_s"] = round(time.perf_counter() - start, 3)
dw._warm_label_colormap = warm_timed

npe2.PluginManager.instance().discover()
viewer = napari.Viewer(show=False)
[layer] = viewer.open(path, plugin="napari-microml")
_, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Defect segmenter")
def wait(seconds, until=None):
    end = time.perf_counter() + seconds
    while (until is None and time.perf_counter() < end) or (until is not None and not until()):
        QApplication.processEvents(); time.sleep(0.002)
with StallMonitor() as idle:
    wait(pause)
start = clicked[0] = time.perf_counter()
with StallMonitor() as run:
    widget.run_button.native.click()
    wait(0, until=lambda: widget.worker is None)
    widget_s = time.perf_counter() - start
image = np.asarray(layer.data, np.float32)
start = time.perf_counter()
res = mm.segment_defects(image, pixel_size=pixel_size_nm(layer), threshold=widget.threshold.value)
mm.classify_environments(image, res.atoms)
api_s = time.perf_counter() - start
print("RESULT " + json.dumps(dict(widget_s=round(widget_s, 3), api_s=round(api_s, 3),
      stall_s=round(run.longest, 3), stall_waiting_s=round(idle.longest, 3), **marks)))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pause", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--image", default=str(sorted(IMAGE.glob("021_*.tif"))[0]))
    args = parser.parse_args(argv)
    env = {**os.environ, "QT_API": "pyqt6"}
    rows = []
    for rep in range(args.repeats):
        for pause in args.pause:
            for arm in ("baseline", "prepared"):
                cmd = [sys.executable, "-c", CHILD, str(ROOT), arm, str(pause), args.image]
                if not os.environ.get("DISPLAY"):
                    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", *cmd]
                load = os.getloadavg()[0]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                row = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-500:]}
                if "widget_s" in row:
                    row["widget_over_api"] = round(row["widget_s"] / row["api_s"], 2)
                rows.append(
                    {"arm": arm, "pause_s": pause, "run": rep + 1, "load_1min": load, **row}
                )
    print(
        json.dumps(
            {
                "benchmark": "defects_first_run",
                "image": args.image,
                "cpus": os.cpu_count(),
                "runs": rows,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
