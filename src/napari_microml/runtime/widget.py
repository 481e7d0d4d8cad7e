"""The base dock widget every tool reuses: device picker, Run/Cancel, progress, status.

A tool subclasses :class:`ToolWidget`, adds its own controls, and implements

* ``make_job()`` → a generator function (no arguments) that runs the core's ``*_iter``
  generator, yielding ``("progress", done, total, message)`` and returning a result;
  it runs in a napari worker thread and must not touch layers;
* ``show_result(result)`` → runs on the main thread and writes layers.

Cancel calls ``worker.quit()``; the generator stops at its next yield and ``show_result`` is
never called, so a cancelled run leaves no half-written layer.
"""
from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton

from napari_microml.runtime.device import CHOICES, describe_device
from napari_microml.runtime.provenance import KEY


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

    return ComboBox(label="Rescale", choices=list(RESCALE_MODES), value="auto",
                    tooltip=f"auto: a lattice whose period is outside the trained {trained} is "
                            "resampled for the network (results stay in your pixels); always: any "
                            f"lattice is resampled to a {TARGET:g} px period - try it when columns are "
                            "missed on a noisy image with a large period; off: never")


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
    if name in viewer.layers and viewer.layers[name]._type_string == kind:
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
            widgets=[*controls, self.device_choice, self.run_button, self.progress,
                     self.status, self.ran_on],
        )
        for label in (self.status, self.ran_on):  # room for messages that arrive later
            label.native.setMinimumWidth(220)
            label.native.setWordWrap(True)
        self.run_button.changed.connect(self._on_run_clicked)

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
        except ValueError as err:
            self._say(f"Cannot run: {err}")
            from napari.utils.notifications import show_warning

            show_warning(str(err))
            return None
        self._handler = on_result or self.show_result
        worker = create_worker(job, _start_thread=False)
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self._say("Cancelled: no layers were changed."))
        worker.finished.connect(self._on_finished)
        self.worker = worker
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

    def _on_yield(self, message):
        if isinstance(message, tuple) and message and message[0] == "progress":
            _, done, total, text = (*message, "")[:4]
            self.progress.max = max(int(total), 1)
            self.progress.value = min(int(done), self.progress.max)
            if text:
                self._say(text)

    def _on_returned(self, result):
        self._handler(result)
        device = getattr(result, "device", None)
        if device:
            self.ran_on.value = str(device)
        if self.status.value in ("Running…", "Cancelling…"):
            self._say("Done.")

    def _on_error(self, err):
        self._say(f"Failed: {err}")

    def _on_finished(self):
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
