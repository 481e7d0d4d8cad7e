"""What every user-journey test shares: open a tool the way the Plugins menu does, open a real
file through our reader, click a button, wait for the worker while watching the event loop, and
check that the result can be seen in the viewer as the user left it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-microml"
# The journeys only fail on a real freeze; benchmarks/journeys.py holds the 0.25 s target.
MAX_STALL_S = 1.0
TIMEOUT_MS = 240_000
# benchmarks/journeys.py sets this: journeys then append their timings here as JSON lines.
REPORT = os.environ.get("MICROML_JOURNEY_REPORT")


def record(journey: str, **figures):
    """Append one journey's figures (widget_s, api_s, stall_s, …) to the benchmark report."""
    if REPORT:
        with open(REPORT, "a") as fh:
            fh.write(json.dumps({"journey": journey, **figures}) + "\n")


def api_seconds(call) -> float | None:
    """Time the plain API call that the widget run stands for; only when benchmarking, so the
    test suite does not pay for every run twice."""
    if not REPORT:
        return None
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class StallMonitor:
    """Longest gap between ticks of a 20 ms QTimer: how long the GUI thread was blocked."""

    def __init__(self, interval_ms: int = 20):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.longest = 0.0
        self._last = None
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def _tick(self):
        now = time.perf_counter()
        if self._last is not None:
            self.longest = max(self.longest, now - self._last - self.interval)
        self._last = now

    def __enter__(self):
        self._last = time.perf_counter()
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.stop()
        return False


def open_tool(viewer, display_name: str):
    """The dock widget exactly as *Plugins → napari-microml → display_name* opens it."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, display_name)
    return widget


def open_file(viewer, path: Path):
    """A file through the plugin's reader, as *File → Open* with napari-microml chosen."""
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert layers, f"the reader returned no layer for {path}"
    return layers


def click(
    qtbot, button, widget, *, timeout_ms: int = TIMEOUT_MS, journey: str | None = None, api=None
) -> float:
    """Click a magicgui PushButton, wait until the widget's worker is done, return the longest
    event-loop stall (s) seen meanwhile. With ``journey`` (and, when benchmarking, ``api``: a
    no-argument call of the same work through the Python API) the timings go to the report."""
    start = time.perf_counter()
    with StallMonitor() as monitor:
        button.native.click()
        qtbot.waitUntil(lambda: getattr(widget, "worker", None) is None, timeout=timeout_ms)
        widget_s = time.perf_counter() - start
        qtbot.wait(50)
    if journey and REPORT:
        api_s = None if api is None else round(api_seconds(api), 3)
        record(journey, widget_s=round(widget_s, 3), stall_s=round(monitor.longest, 3), api_s=api_s)
    return monitor.longest


def assert_no_stall(stall_s: float, what: str = "the run"):
    assert stall_s <= MAX_STALL_S, f"the event loop stalled {stall_s:.2f} s during {what}"


def _settle(ms: int = 100):
    """Let napari's slicing and vispy catch up (a visibility change is drawn on a later tick)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _canvas(viewer) -> np.ndarray:
    _settle()
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False), float)


def assert_visible(viewer, layer, *, min_fraction: float = 0.002, screenshot: Path | None = None):
    """The layer shows in the canvas as the user has it: hiding it changes the picture.

    Catches a 2D map placed on the (x, energy) plane of a spectrum image, a layer off camera,
    an all-transparent colour map or a layer hidden under another one. The whole window is
    drawn first (the canvas of a never-shown window is blank), to ``screenshot`` if given."""
    assert layer in viewer.layers, f"{layer.name} is not in the viewer"
    assert layer.visible, f"{layer.name} is hidden"
    window = viewer.screenshot(canvas_only=False, flash=False)
    if screenshot is not None:
        import imageio.v3 as iio

        iio.imwrite(screenshot, window)
    shown = _canvas(viewer)
    layer.visible = False
    try:
        hidden = _canvas(viewer)
    finally:
        layer.visible = True
        _settle()
    changed = np.abs(shown[..., :3] - hidden[..., :3]).max(axis=-1) > 8
    fraction = float(changed.mean())
    assert fraction >= min_fraction, (
        f"{layer.name} is not visible in the current view: hiding it changes "
        f"{fraction:.4%} of the canvas"
    )
    return fraction
