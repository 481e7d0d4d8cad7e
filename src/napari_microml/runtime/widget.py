"""The base dock widget every tool reuses: device picker, Run/Cancel, progress, status.

A tool subclasses :class:`ToolWidget`, adds its own controls, and implements

* ``make_job()`` → a generator function (no arguments) that runs the core's ``*_iter``
  generator, yielding ``("progress", done, total, message)`` or :class:`Update` messages and
  returning a result; it runs in a napari worker thread, reads the layers' data there (never
  on the GUI thread) and must not write layers or widget state;
* ``show_result(result)`` → runs on the main thread and writes layers; ``show_partial(x)``
  (optional) shows an :class:`Update`'s ``partial`` result while the job goes on.

Progress messages are throttled (at most every :data:`PROGRESS_INTERVAL_S`) so a fast loop
does not flood the event loop; after a result with physical units the scale bar is shown.

Cancel calls ``worker.quit()``; the generator stops at its next yield and ``show_result`` is
never called, so a cancelled run leaves no half-written layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton

from napari_microml.runtime.device import CHOICES, describe_device
from napari_microml.runtime.provenance import KEY

PROGRESS_INTERVAL_S = 0.1


@dataclass
class Update:
    """A typed message from a job to its widget: progress (``done`` of ``total``, ``text``)
    and/or a ``partial`` result that the widget's ``show_partial`` puts on screen."""

    done: int | None = None
    total: int | None = None
    text: str = ""
    partial: Any = None


def preload(*modules: str) -> None:
    """Import what a tool's worker will need while its dock opens: an import in the worker
    holds the GIL (torch, gpytorch: seconds) and would freeze the window mid-run."""
    import importlib

    for name in modules:
        importlib.import_module(name)


def show_scale_bar(viewer, layers) -> None:
    """Turn the scale bar on when one of ``layers`` has physical units in the displayed plane."""
    for layer in layers:
        units = getattr(layer, "units", None)
        if units is None or len(units) < 2:
            continue
        if any(str(u) not in ("pixel", "px", "") for u in units[-2:]):
            overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
            bar = getattr(overlays, "scale_bar", None) or viewer.scale_bar  # napari < 0.9
            if not bar.visible:  # bottom right sits under the right-hand dock's edge
                bar.position = "bottom_left"
                bar.visible = True
            return


def physical_kwargs(layer, ndim: int | None = None) -> dict:
    """``scale``, ``translate``, ``units`` and ``axis_labels`` of ``layer`` (last ``ndim`` axes)."""
    if layer is None:
        return {}
    n = layer.ndim if ndim is None else ndim
    out = {"scale": tuple(layer.scale[-n:]), "translate": tuple(layer.translate[-n:])}
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(str(u) for u in units[-n:])
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        out["axis_labels"] = tuple(labels[-n:])
    return out


def pixel_size_nm(layer) -> float | None:
    """The layer's in-plane pixel size in nm when its units say so, else ``None``."""
    units = getattr(layer, "units", None)
    if layer is None or units is None:
        return None
    try:
        value = (float(layer.scale[-1]) * units[-1]).to("nm").magnitude
    except Exception:  # pixel units or anything pint cannot convert to nm
        return None
    return float(value) if value > 0 else None


def rescale_combo(trained: str) -> ComboBox:
    """The "Rescale" choice of the lattice tools (auto/always/off; see runtime/spacing.py)."""
    from napari_microml.runtime.spacing import RESCALE_MODES, TARGET

    return ComboBox(
        label="Rescale",
        choices=list(RESCALE_MODES),
        value="auto",
        tooltip=f"auto: a lattice whose period is outside the trained {trained} is "
        "resampled for the network (results stay in your pixels); always: any "
        f"lattice is resampled to a {TARGET:g} px period - try it when columns are "
        "missed on a noisy image with a large period; off: never",
    )


def resample_note(parameters: dict) -> str:
    """A sentence for the status line when a lattice tool ran its network on a resampled copy
    (``parameters['zoom']`` ≠ 1; see runtime/spacing.py), else ''."""
    from napari_microml.runtime.spacing import TARGET

    zoom, period = parameters.get("zoom", 1.0), parameters.get("estimated_period_px")
    if zoom == 1.0:
        return ""
    lattice = f" (lattice period {period:g} px → {TARGET:g} px)" if period else ""
    return f" The network saw a copy resampled ×{zoom:g}{lattice}; results are on your pixels."


def viewer_camera(viewer):
    """``viewer.scene.camera`` (napari ≥ 0.9), else the older ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def upsert_layer(viewer, name: str, kind: str, data, **kwargs):
    """Update the layer called ``name`` if it has the same kind, else add a new one."""
    # __class__, not type(): plugin widgets see the layer through napari's public-only proxy
    if name in viewer.layers and viewer.layers[name].__class__.__name__.lower() == kind:
        layer = viewer.layers[name]
        features = kwargs.pop("features", None)
        metadata = kwargs.pop("metadata", None)
        layer.data = data
        if features is not None:
            layer.features = features
        if metadata is not None:
            layer.metadata.update(metadata)
        for key, value in kwargs.items():
            try:
                setattr(layer, key, value)
            except (AttributeError, ValueError, TypeError):
                pass  # e.g. napari refuses to change ndim-bound properties; data already set
        return layer
    if name in viewer.layers:
        viewer.layers.remove(name)
    adder = getattr(viewer, f"add_{kind}")
    return adder(data, name=name, **kwargs)


class ToolWidget(Container):
    """Base class: device selector, Run/Cancel button, progress bar and status lines."""

    tool_name = "tool"

    def __init__(self, viewer, controls: list):
        self.viewer = viewer
        self.worker = None
        self.device_choice = ComboBox(label="Device", choices=list(CHOICES), value="auto")
        self.run_button = PushButton(text="Run")
        self.progress = ProgressBar(value=0, min=0, max=1, label="Progress")
        self.status = Label(label="Status", value="Ready.")
        self.ran_on = Label(label="Ran on", value="–")
        super().__init__(
            widgets=[
                *controls,
                self.device_choice,
                self.run_button,
                self.progress,
                self.status,
                self.ran_on,
            ],
        )
        for label in (self.status, self.ran_on):  # room for messages that arrive later
            label.native.setMinimumWidth(220)
            label.native.setWordWrap(True)
        self.run_button.changed.connect(self._on_run_clicked)
        from qtpy.QtCore import QTimer

        self._ui_queue: list = []
        self._finish_pending = False
        self._ui_timer = QTimer()
        self._ui_timer.setInterval(0)
        self._ui_timer.timeout.connect(self._next_ui)

    # --- to implement in subclasses -------------------------------------------------------
    def make_job(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def show_result(self, result) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- shared machinery -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _on_run_clicked(self, *_):
        if self.busy:
            self.cancel()
        else:
            self.start()

    def start(self, job=None, on_result=None):
        """Start ``job`` (default: ``self.make_job()``) in a napari generator worker; its
        return value goes to ``on_result`` (default: ``self.show_result``) on the main thread."""
        from napari.qt.threading import create_worker

        try:
            job = job or self.make_job()
        except (ValueError, TypeError) as err:  # bad input: one sentence for the user
            self._say(f"Cannot run: {err}")
            from napari.utils.notifications import show_warning

            show_warning(str(err))
            return None
        except Exception as err:  # noqa: BLE001 - a bug must still say something on screen
            self._say(f"Failed before starting: {type(err).__name__}: {err}")
            from napari.utils.notifications import show_error

            show_error(f"{self.tool_name}: {type(err).__name__}: {err}")
            return None
        self._handler = on_result or self.show_result
        worker = create_worker(job, _start_thread=False)
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self._say("Cancelled: no layers were changed."))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._last_progress = 0.0
        self.run_button.text = "Cancel"
        self.progress.value = 0
        self._say("Running…")
        worker.start()
        return worker

    def cancel(self):
        if self.worker is not None:
            self._say("Cancelling…")
            self.worker.quit()

    def device_label(self) -> str:
        return describe_device(self.device_choice.value)

    def show_partial(self, partial) -> None:
        """Show a partial result sent in an :class:`Update` (default: nothing)."""

    def _on_yield(self, message):
        if isinstance(message, Update):
            if message.partial is not None:
                self.show_partial(message.partial)
            if message.total is not None:
                self._show_progress(
                    message.done or 0,
                    message.total,
                    message.text,
                    force=message.partial is not None,
                )
            elif message.text:
                self._say(message.text)
        elif isinstance(message, tuple) and message and message[0] == "progress":
            _, done, total, text = (*message, "")[:4]
            self._show_progress(done, total, text)

    def _show_progress(self, done, total, text: str = "", force: bool = False) -> bool:
        """Update the bar and status; skipped (False) when the last update was under
        PROGRESS_INTERVAL_S ago, unless it is the last step or ``force``."""
        now = time.perf_counter()
        last = int(done) >= int(total)
        if not (force or last) and now - getattr(self, "_last_progress", 0.0) < PROGRESS_INTERVAL_S:
            return False
        self._last_progress = now
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)
        if text:
            self._say(text)
        return True

    def later(self, *calls) -> None:
        """Queue GUI updates to run one per event-loop turn: adding a napari layer costs
        0.1-0.3 s, so several in one go would freeze the window. The run stays busy (Run shows
        Cancel) until the queue is done."""
        self._ui_queue.extend(calls)
        if not self._ui_timer.isActive():
            self._ui_timer.start()

    def _next_ui(self):
        if self._ui_queue:
            call = self._ui_queue.pop(0)
            try:
                call()
            except Exception as err:  # noqa: BLE001 - say it; the rest of the queue still runs
                self._say(f"Could not show the result: {type(err).__name__}: {err}")
        if not self._ui_queue:
            self._ui_timer.stop()
            if self._finish_pending:
                self._finish()

    def _on_returned(self, result):
        self._handler(result)
        self.later(lambda: self._after_result(result))

    def _after_result(self, result):
        show_scale_bar(self.viewer, list(self.viewer.layers))
        device = getattr(result, "device", None)
        if device:
            self.ran_on.value = str(device)
        if self.status.value in ("Running…", "Cancelling…"):
            self._say("Done.")

    def _on_error(self, err):
        self._say(f"Failed: {err or type(err).__name__}")

    def _on_finished(self):
        if self._ui_queue:  # busy until the queued layer updates are on screen
            self._finish_pending = True
        else:
            self._finish()

    def _finish(self):
        self._finish_pending = False
        self.worker = None
        self.run_button.text = "Run"

    def _say(self, text: str):
        self.status.value = text

    @staticmethod
    def provenance_metadata(record: dict) -> dict:
        return {KEY: record}


def as_points(positions: np.ndarray, frames: np.ndarray | None) -> np.ndarray:
    """(N, 2) positions → napari Points data; with frames, (N, 3) (frame, row, col)."""
    positions = np.asarray(positions, float).reshape(-1, 2)
    if frames is None:
        return positions
    return np.column_stack([np.asarray(frames, float), positions])
