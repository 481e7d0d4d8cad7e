"""napari dock widget for DKL active learning (thin: all logic lives in ``dkl.learner``).

Workflow: pick the structure image and the measurement source (a spectrum-image layer with
a scalarizer window, or a scalar-map layer), press **Initialize** (one point per kind of
structure patch: the learner's "diverse" initial design), then
**Step** (measure the points of the editable "next" layer: drag or delete them first to veto
the model) or **Run** (steps until the budget; the button becomes Cancel = Stop between steps).
"""
from __future__ import annotations

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_microml.dkl.acquisition import ACQUISITIONS
from napari_microml.dkl.scalarizers import SCALARIZERS, WindowRatio
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.widget import ToolWidget, physical_kwargs, upsert_layer
from napari_microml.runtime.workers import progress

SOURCE_KINDS = ("spectrum image", "scalar map")


def _spectral_axis(layer, n: int) -> np.ndarray | None:
    """The spectral axis stored in layer metadata (``axis``/``energy_axis``/``spectral_axis``)."""
    meta = getattr(layer, "metadata", {}) or {}
    for key in ("axis", "energy_axis", "spectral_axis", "bias"):
        if key in meta:
            ax = np.asarray(meta[key], float).ravel()
            if ax.size == n:
                return ax
    return None


class ActiveLearningWidget(ToolWidget):
    """Deep-kernel-learning active learning: where to measure next on a structure image."""

    tool_name = "dkl_active_learning"

    def __init__(self, viewer):
        import napari

        self.structure_layer = create_widget(annotation=napari.layers.Image, label="Structure")
        self.source_kind = ComboBox(label="Source", choices=list(SOURCE_KINDS),
                                    value="spectrum image")
        self.source_layer = create_widget(annotation=napari.layers.Image, label="Source layer")
        self.scalarizer = ComboBox(label="Scalarizer", choices=list(SCALARIZERS), value="peak area")
        self.win_lo = FloatSpinBox(label="Window from", value=0.0, min=-1e9, max=1e9, step=1.0)
        self.win_hi = FloatSpinBox(label="Window to", value=10.0, min=-1e9, max=1e9, step=1.0)
        self.win2_lo = FloatSpinBox(label="2nd window from", value=10.0, min=-1e9, max=1e9,
                                    step=1.0)
        self.win2_hi = FloatSpinBox(label="2nd window to", value=20.0, min=-1e9, max=1e9, step=1.0)
        self.patch_size = SpinBox(
            label="Patch size (px)", value=0, min=0, max=128,
            tooltip="Side of the image patch the model sees around each pixel. 'auto' (0) mixes "
                    "8, 16 and 24 px, weighted by how well each predicts the measurements so far.")
        self.patch_size.native.setSpecialValueText("auto")
        self.acquisition = ComboBox(label="Acquisition", choices=list(ACQUISITIONS), value="ts")
        self.maximize = CheckBox(label="Maximize", value=True)
        self.batch_size = SpinBox(label="Batch size", value=1, min=1, max=256)
        self.budget = SpinBox(label="Budget", value=30, min=1, max=10_000_000)
        self.n_initial = SpinBox(label="Initial points", value=5, min=1, max=100_000)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.init_button = PushButton(text="Initialize")
        self.step_button = PushButton(text="Step")
        self.stop_button = PushButton(text="Stop")
        self.log_path = FileEdit(label="Log file", mode="w", filter="*.csv *.json")
        self.export_button = PushButton(text="Export log")
        buttons = Container(widgets=[self.init_button, self.step_button, self.stop_button],
                            layout="horizontal", labels=False)
        controls = [
            self.structure_layer, self.source_kind, self.source_layer, self.scalarizer,
            self.win_lo, self.win_hi, self.win2_lo, self.win2_hi, self.patch_size,
            self.acquisition, self.maximize, self.batch_size, self.budget, self.n_initial,
            self.seed, buttons,
        ]
        self.win2_lo.tooltip = self.win2_hi.tooltip = (
            "window ratio: denominator window; edge intensity: pre-edge background window")
        super().__init__(viewer, controls)
        self.extend([self.log_path, self.export_button])
        self.run_button.text = "Run"
        self.learner = None
        self.source = None
        self._key = None
        self._mode = "run"
        self.history: list[tuple[int, float]] = []
        self.init_button.changed.connect(lambda *_: self._start_mode("init"))
        self.step_button.changed.connect(lambda *_: self._start_mode("step"))
        self.stop_button.changed.connect(lambda *_: self.cancel())
        self.export_button.changed.connect(self.export_log)
        self.source_kind.changed.connect(self._update_visibility)
        self.scalarizer.changed.connect(self._update_visibility)
        self._update_visibility()
        self._make_plot()

    # --- UI helpers ------------------------------------------------------------------------
    def _update_visibility(self, *_):
        spec = self.source_kind.value == "spectrum image"
        ratio = self.scalarizer.value in ("window ratio", "edge intensity")
        loop = self.scalarizer.value == "loop area"
        self.scalarizer.visible = spec
        for w in (self.win_lo, self.win_hi):
            w.visible = spec and not loop
        for w in (self.win2_lo, self.win2_hi):
            w.visible = spec and ratio

    def _make_plot(self):
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            self.figure = None
            return
        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.ax_best, self.ax_spec = self.figure.subplots(1, 2)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.native.layout().addWidget(self.canvas)

    def _start_mode(self, mode: str):
        if self.busy:
            return None
        self._mode = mode
        try:
            return self.start()
        finally:
            self._mode = "run"

    # --- inputs ----------------------------------------------------------------------------
    def _structure(self):
        layer = self.structure_layer.value
        if layer is None:
            raise ValueError("Choose a structure image layer first.")
        data = np.asarray(layer.data)
        if data.ndim != 2:
            raise ValueError(f"The structure layer must be a 2D image, not {data.shape}.")
        return layer, data

    def _make_scalarizer(self, axis):
        name = self.scalarizer.value
        cls = SCALARIZERS[name]
        if name == "window ratio":
            return WindowRatio((self.win_lo.value, self.win_hi.value),
                               (self.win2_lo.value, self.win2_hi.value), axis=axis)
        if name == "edge intensity":  # second window = pre-edge background fit
            return cls((self.win_lo.value, self.win_hi.value),
                       (self.win2_lo.value, self.win2_hi.value), axis=axis)
        if name == "loop area":
            return cls(axis=axis)
        return cls((self.win_lo.value, self.win_hi.value), axis=axis)

    def _make_source(self, shape):
        from napari_microml.dkl.sources import ScalarMapSource, SpectrumImageSource

        layer = self.source_layer.value
        if layer is None:
            raise ValueError("Choose the layer that holds the measurements (source layer).")
        data = np.asarray(layer.data)
        if self.source_kind.value == "scalar map":
            if data.shape != tuple(shape):
                raise ValueError(
                    f"The scalar map {data.shape} does not match the structure image "
                    f"{tuple(shape)}."
                )
            return ScalarMapSource(data)
        if data.ndim != 3:
            raise ValueError(
                f"A spectrum-image source must be 3D; layer '{layer.name}' has shape {data.shape}."
            )
        if data.shape[:2] == tuple(shape):
            cube = data
        elif data.shape[1:] == tuple(shape):
            cube = np.moveaxis(data, 0, -1)  # (E, H, W) as napari shows it
        else:
            raise ValueError(
                f"The spectrum image {data.shape} does not match the structure image "
                f"{tuple(shape)}: expected (H, W, E) or (E, H, W)."
            )
        axis = _spectral_axis(layer, cube.shape[-1])
        scal = self._make_scalarizer(axis)
        if self.scalarizer.value != "loop area":
            ax = np.arange(cube.shape[-1], float) if axis is None else axis
            from napari_microml.dkl.scalarizers import window_mask

            window_mask(ax, (self.win_lo.value, self.win_hi.value))  # clear error if empty
        return SpectrumImageSource(cube, axis=axis, scalarizer=scal)

    def _settings_key(self):
        return (
            id(self.structure_layer.value), id(self.source_layer.value), self.source_kind.value,
            self.scalarizer.value, self.win_lo.value, self.win_hi.value, self.win2_lo.value,
            self.win2_hi.value, self.patch_size.value, self.acquisition.value,
            self.maximize.value, self.seed.value, self.device_choice.value,
        )

    def _patch(self):
        """The patch size for the learner: 'auto' (the spin box at 0) or a number of pixels."""
        return "auto" if self.patch_size.value == 0 else int(self.patch_size.value)

    def _pending_points(self) -> np.ndarray:
        """Integer (row, col) of the current "next" layer (the user may have edited it)."""
        if "next" not in self.viewer.layers or self.learner is None:
            return np.zeros((0, 2), int)
        pts = np.asarray(self.viewer.layers["next"].data, float)
        if pts.size == 0:
            return np.zeros((0, 2), int)
        h, w = self.learner.shape
        rc = np.rint(pts[:, -2:]).astype(int)
        rc[:, 0] = np.clip(rc[:, 0], 0, h - 1)
        rc[:, 1] = np.clip(rc[:, 1], 0, w - 1)
        _, first = np.unique(rc[:, 0] * w + rc[:, 1], return_index=True)
        rc = rc[np.sort(first)]
        measured = set((self.learner.coords[:, 0] * w + self.learner.coords[:, 1]).tolist())
        keep = [i for i, (r, c) in enumerate(rc) if r * w + c not in measured]
        return rc[keep]

    # --- jobs ------------------------------------------------------------------------------
    def _new_learner(self):
        from napari_microml.dkl.learner import ActiveLearner

        _, data = self._structure()
        source = self._make_source(data.shape)
        learner = ActiveLearner(
            data, patch_size=self._patch(), acquisition=self.acquisition.value,
            seed=self.seed.value, device=self.device_choice.value, maximize=self.maximize.value,
        )
        return learner, source

    def make_job(self):
        mode = self._mode
        need_new = mode == "init" or self.learner is None or self._key != self._settings_key()
        if need_new:
            learner, source = self._new_learner()
        else:
            learner, source = self.learner, self.source
        batch, budget, n_init = self.batch_size.value, self.budget.value, self.n_initial.value
        if n_init > learner.shape[0] * learner.shape[1]:
            raise ValueError("More initial points than pixels in the image.")
        pending = None if need_new else self._pending_points()
        key = self._settings_key()

        def measure_and_suggest(coords):
            values = np.asarray(source(coords), float).reshape(-1)
            learner.observe(coords, values)
            remaining = max(budget - learner.n_observed, 0)
            nxt = learner.suggest(min(batch, remaining)) if remaining else np.zeros((0, 2), int)
            return nxt

        def job():
            self.learner, self.source, self._key = learner, source, key
            nxt = pending
            if need_new:
                coords = learner.suggest(n_init)  # the initial design: no data yet
                nxt = measure_and_suggest(coords)
                snap = self._snapshot(learner, source, nxt)
                if mode == "init":
                    return snap
                yield ("snapshot", snap)
                yield progress(learner.n_observed, budget, f"initialised with {n_init} points")
            steps = 0
            while learner.n_observed < budget:
                if nxt is None or len(nxt) == 0:
                    nxt = learner.suggest(min(batch, budget - learner.n_observed))
                nxt = nxt[: max(budget - learner.n_observed, 0)]
                nxt = measure_and_suggest(nxt)
                steps += 1
                snap = self._snapshot(learner, source, nxt)
                if mode == "step":
                    return snap
                yield ("snapshot", snap)  # layers first: a Stop right after keeps them current
                yield progress(learner.n_observed, budget,
                               f"step {learner.step}: {learner.n_observed}/{budget}, "
                               f"best {learner.best_value:.4g}")
            return self._snapshot(learner, source, nxt)

        return job

    @staticmethod
    def _snapshot(learner, source, nxt) -> dict:
        """Copies of everything the layers need (made in the worker, shown on the main thread)."""
        from napari_microml.runtime.device import describe_device

        mean, std = learner.predict() if learner.n_observed else (None, None)
        spectra = getattr(source, "last_spectra", None)
        return {
            "coords": learner.coords.copy(), "values": learner.values.copy(),
            "next": np.asarray(nxt if nxt is not None else np.zeros((0, 2)), float).copy(),
            "mean": mean, "std": std,
            "acquisition": (None if learner.last_acquisition is None
                            else learner.last_acquisition.copy()),
            "best": learner.best_value, "step": learner.step,
            "spectrum": None if spectra is None else np.asarray(spectra[-1]).copy(),
            "axis": getattr(source, "axis", None),
            "device": describe_device(learner.model.device),
        }

    def start(self, job=None):
        worker = super().start(job)
        if worker is not None:  # a Stop keeps every completed step (layers show them)
            worker.aborted.connect(
                lambda: self._say("Stopped: the measured points so far are kept; Step or Run "
                                  "continues the campaign.")
            )
        return worker

    # --- results ---------------------------------------------------------------------------
    def _on_yield(self, message):
        if isinstance(message, tuple) and message and message[0] == "snapshot":
            self.show_result(message[1])
            return
        super()._on_yield(message)

    def show_result(self, snap) -> None:
        if not isinstance(snap, dict):
            return
        layer = self.structure_layer.value
        phys = physical_kwargs(layer, 2)
        prov = self.provenance_metadata(make_provenance(
            self.tool_name,
            parameters={
                "patch_size": self._patch(), "acquisition": self.acquisition.value,
                "batch_size": self.batch_size.value, "budget": self.budget.value,
                "maximize": self.maximize.value, "source": self.source_kind.value,
                "scalarizer": self.scalarizer.value,
                "window": (self.win_lo.value, self.win_hi.value),
            },
            device=snap["device"], seed=self.seed.value,
            input_name=getattr(layer, "name", None),
        ))
        v = self.viewer
        measured = upsert_layer(
            v, "measured", "points", snap["coords"].astype(float),
            features={"value": snap["values"]}, size=2, metadata=prov, **phys,
        )
        try:
            measured.face_colormap = "viridis"
            measured.face_color = "value"
            measured.refresh_colors()
        except Exception:  # colour by feature is cosmetic; keep the data either way
            pass
        for name, key, cmap in (("DKL mean", "mean", "magma"), ("DKL uncertainty", "std", "gray"),
                                ("acquisition", "acquisition", "inferno")):
            img = snap.get(key)
            if img is None:
                continue
            img = np.asarray(img, np.float32)
            finite = np.isfinite(img)
            if not finite.any():
                continue
            img = np.where(finite, img, np.min(img[finite]))
            lo, hi = float(img.min()), float(img.max())
            lim = (lo, hi if hi > lo else lo + 1e-6)
            upsert_layer(v, name, "image", img, colormap=cmap, opacity=0.6, blending="additive",
                         contrast_limits=lim, metadata=prov, visible=name != "acquisition", **phys)
        upsert_layer(v, "next", "points", snap["next"], size=3, face_color="red",
                     border_color="white", metadata=prov, **phys)
        v.layers.selection.active = v.layers["next"]
        self.history.append((int(snap["step"]), float(snap["best"])))
        self.ran_on.value = str(snap["device"])
        self._say(f"Step {snap['step']}: {len(snap['values'])} measured, best {snap['best']:.4g}.")
        self._update_plot(snap)

    def _update_plot(self, snap):
        if self.figure is None:
            return
        vals = snap["values"]
        best = np.maximum.accumulate(vals) if self.maximize.value else np.minimum.accumulate(vals)
        self.ax_best.clear()
        self.ax_best.plot(np.arange(1, len(best) + 1), best, "-o", ms=2)
        self.ax_best.set_xlabel("measurements")
        self.ax_best.set_ylabel("best value")
        self.ax_spec.clear()
        if snap["spectrum"] is not None:
            ax = snap["axis"] if snap["axis"] is not None else np.arange(len(snap["spectrum"]))
            self.ax_spec.plot(ax, snap["spectrum"], lw=1)
            self.ax_spec.set_title("last spectrum", fontsize=8)
        self.canvas.draw_idle()

    def export_log(self, *_):
        from napari.utils.notifications import show_warning

        if self.learner is None or not self.learner.log:
            show_warning("Nothing to export yet: initialise and measure first.")
            return None
        path = self.log_path.value
        if path is None or str(path) in ("", "."):
            show_warning("Choose a log file (.csv or .json) first.")
            return None
        out = self.learner.export_log(path)
        self._say(f"Log written to {out}.")
        return out
