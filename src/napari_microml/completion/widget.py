"""Partial-scan completer dock widget: simulate a sparse scan of a full image, or complete data
that was measured sparsely (sparse image + mask, or scan positions with values)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, FloatSlider, SpinBox

# scipy imported with the dock: imported in the worker it would block the GUI ~0.5 s
from napari_microml.completion import kriging  # noqa: F401
from napari_microml.completion.masks import MASK_KINDS, scan_mask
from napari_microml.completion.metrics import relative_rms
from napari_microml.completion.scan_io import (
    check_mask,
    check_sparse,
    rasterise,
    undeclared_grid_note,
    weights_sentence,
)
from napari_microml.runtime.provenance import KEY
from napari_microml.runtime.widget import (
    Job,
    ToolWidget,
    layer_picker,
    opened_from_file,
    physical_kwargs,
    pick,
    preload,
)

SIMULATE, COMPLETE = "Simulate", "Complete measured data"
IMAGE_MASK, POINTS = "sparse image + mask", "scan points + values"
NAN_MASK = "NaN pixels = not measured"  # the Mask choice for a scan saved with NaN gaps (CLI's)
ZERO_MASK = "0 pixels = not measured"  # a scan saved zero-filled (full image × scan mask)
ZERO_FILLED_FRACTION = 0.5  # a full image is rarely 0 at half its pixels; a sparse scan is
MASK_LEVELS = 16  # non-zero values of at most this many levels: a mask (mask-1.tif has 11)


def _model_choices() -> list[tuple[str, str]]:
    """(label, model name): kriging (the default), the reference local GP, then the networks."""
    from napari_microml.completion.complete import KRIGING, LOCAL_GP
    from napari_microml.nets.registry import list_models

    names = [n.removeprefix("completion-") for n in list_models("completion")]
    nets = [(f"network: {n}", n) for n in sorted(names, key=lambda n: n != "default")]
    return [("kriging (default)", KRIGING), ("local GP (slower reference)", LOCAL_GP), *nets]


SIGMA_CHOICES = [
    ("of a re-scan (signal + pixel noise)", "measurement"),
    ("of the noise-free signal", "signal"),
]


@dataclass
class _Plan:
    """What a run reads (made on the GUI thread from shapes and settings only)."""

    source: Any  # the layer the run is named after and whose scale the results take
    params: dict
    sparse_layer: bool  # also show the sparse values (when they are not a layer already)
    prepare: Callable[..., tuple]  # input arrays → (values, mask, truth or None), in the worker
    inputs: dict = field(default_factory=dict)  # {argument of prepare: layer}


@dataclass
class _Run:
    """A finished completion and what the result handler draws from it (made in the worker)."""

    result: Any
    coverage: float
    limits: tuple[float, float]
    sigma_limits: tuple[float, float]
    median_sigma: float
    sparse: np.ndarray | None = None
    error: np.ndarray | None = None
    rms: float = float("nan")
    outside: str = ""  # the sentence on pixels beyond the scanned area (extrapolated), if any
    weights: str = ""  # the sentence on a mask of more than two levels, if any

    @property
    def device(self) -> str:
        """Where the completion ran (the "Ran on" line)."""
        return self.result.device


def _method_note(result) -> str:
    """How the pixels were filled: kriging's mean (the crystal lattice or local) or the network."""
    fits = (result.provenance or {}).get("parameters", {}).get("fitted_hyperparameters") or []
    means = {f.get("mean") for f in fits if isinstance(f, dict)} - {None}
    if not means:
        if result.model == "local-gp":
            return "the local Gaussian process (reference kriging)"
        return f"the {result.model} network"
    if "lattice" in means:
        return "kriging with the crystal-lattice mean (it predicted held-out measured pixels best)"
    if any("basis" in f for f in fits if isinstance(f, dict)):
        return (
            "kriging with a local mean (the lattice found did not predict held-out pixels better)"
        )
    return "kriging with a local mean (no crystal lattice in the scan)"


class ScanCompleterWidget(ToolWidget):
    """Fill in the unmeasured pixels of a partial (sparse) scan, with a per-pixel uncertainty."""

    tool_name = "scan_completer"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.mode = ComboBox(label="Mode", choices=[SIMULATE, COMPLETE], value=SIMULATE)
        # -- Simulate: a full image, scanned sparsely by a mask we draw ---------------------------
        self.image_layer = layer_picker(napari.layers.Image, label="Full image")
        self.kind = ComboBox(label="Scan kind", choices=list(MASK_KINDS), value="spiral")
        self.coverage = FloatSlider(
            label="Coverage (%)",
            value=5.6,
            min=1.0,
            max=50.0,
            step=0.1,
            tooltip="Percent of pixels measured: 5.6 % = 1 pixel in 17.9",
        )
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        # -- Complete: data measured sparsely --------------------------------------------------
        self.source = ComboBox(label="Measured as", choices=[IMAGE_MASK, POINTS], value=IMAGE_MASK)
        self.sparse_layer = layer_picker(napari.layers.Image, label="Sparse image")
        self.mask_layer = ComboBox(
            label="Mask",
            choices=self._mask_choices,
            tooltip="Labels or image layer, non-zero = measured pixel; or 'NaN pixels = not "
            "measured' for a sparse image whose gaps are NaN",
        )
        self.points_layer = layer_picker(napari.layers.Points, label="Scan points")
        self.feature = ComboBox(
            label="Value feature",
            choices=self._feature_choices,
            tooltip="The points' feature holding the measured value",
        )
        self.model = ComboBox(
            label="Method",
            choices=_model_choices(),
            value="kriging",
            tooltip="kriging: a local Gaussian process fitted to this scan (default; "
            "about 1–2 s for 512×512 px; uses the crystal lattice when the scan shows one). "
            "local GP: the slower reference kriging. "
            "network: a trained U-Net (fast; worse than kriging on smooth images)",
        )
        self.sigma = ComboBox(
            label="Uncertainty",
            choices=SIGMA_CHOICES,
            value="measurement",
            tooltip="1σ in the image's units. 'of a re-scan': what measuring the pixel "
            "would read (signal + the pixel noise estimated from the scan); "
            "'of the noise-free signal': without that noise. For a network the pixel "
            "noise is fitted on the scan as kriging fits it",
        )
        self._simulate = [self.image_layer, self.kind, self.coverage, self.seed]
        self._complete = [
            self.source,
            self.sparse_layer,
            self.mask_layer,
            self.points_layer,
            self.feature,
        ]
        super().__init__(
            viewer, [self.mode, *self._simulate, *self._complete, self.model, self.sigma]
        )
        self._prefer_sparse_layer()
        # opened before the dock: a gappy scan, the selected layer first, then the newest
        for layer in (viewer.layers.selection.active, *reversed(list(viewer.layers))):
            if self.mode.value != SIMULATE:
                break
            if isinstance(layer, napari.layers.Image) and layer.ndim == 2 and not _is_scan(layer):
                if self._complete_gappy_scan(layer):
                    break

        from qtpy.QtCore import QTimer

        self._preview_timer = QTimer(self.native)  # debounce: a slider drag redraws once
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(80)
        self._preview_timer.timeout.connect(self.update_preview)
        for w in (self.image_layer, self.kind, self.coverage, self.seed):
            w.changed.connect(self._schedule_preview)
        self.mode.changed.connect(self._on_mode)
        self.source.changed.connect(self._sync_visibility)
        self.points_layer.changed.connect(lambda *_: self.feature.reset_choices())
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._sync_visibility()  # no preview layer until the user touches the Simulate controls
        self.model.changed.connect(self._on_method)

    def _on_method(self, *_):
        """A network needs torch: imported in the worker it held the GIL and Cancel for
        seconds, so it is imported when the network is chosen (kriging needs none)."""
        from napari_microml.completion.complete import KRIGING_SETTINGS

        if self.model.value not in KRIGING_SETTINGS:
            preload("torch")

    # -- choices / visibility ------------------------------------------------------------------
    def _mask_choices(self, *_):
        """Labels and grey image layers; Labels and layers named '*mask*' first (the default)."""
        layers = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, (napari.layers.Labels, napari.layers.Image))
            and not getattr(layer, "rgb", False)
        ]
        layers.sort(
            key=lambda la: (not isinstance(la, napari.layers.Labels), "mask" not in la.name.lower())
        )
        return [(layer.name, layer) for layer in layers] + [
            (NAN_MASK, NAN_MASK),
            (ZERO_MASK, ZERO_MASK),
        ]

    def _feature_choices(self, *_):
        layer = self.points_layer.value if hasattr(self, "points_layer") else None
        if layer is None:
            return []
        return [
            c for c in layer.features.columns if np.issubdtype(layer.features[c].dtype, np.number)
        ]

    def _on_layers_changed(self, event=None):
        self.reset_choices()
        self._prefer_sparse_layer()
        self._follow_opened(opened_from_file(event))

    def _follow_opened(self, layer) -> None:
        """A grey 2D image just opened from a file becomes the 'Full image' to simulate a scan
        of: Run otherwise re-ran the image before it while the new file lay on top. One with
        NaN pixels is a sparse scan saved with NaN gaps, one 0 at most of its pixels a scan saved
        zero-filled: it is completed, NaN or 0 = not measured."""
        if (
            not isinstance(layer, napari.layers.Image)
            or getattr(layer, "rgb", False)
            or layer.ndim != 2
            or _is_scan(layer)
            or self.busy
        ):
            return
        if self._complete_gappy_scan(layer) or self.mode.value != SIMULATE:
            return
        with self.image_layer.changed.blocked():  # no mask preview drawn over the new file
            followed = pick(self.image_layer, layer)
        if followed and not self.busy:  # the last run's sentence was about the image before
            self._say(f"Ready: Run simulates a {self.kind.value} scan of {layer.name}.")

    def _complete_gappy_scan(self, layer) -> bool:
        """Set the dock to complete ``layer`` when it is a sparse scan saved with NaN gaps (as
        ``microml complete`` reads one) or zero-filled (a full image × its scan mask: Simulate
        scanned the zeros again and reported a 29 % error), and say so; False otherwise."""
        gaps = _nan_count(layer.data)
        zeros = 0.0 if gaps else _zero_filled_fraction(layer.data)
        if not gaps and not zeros:
            return False
        self.mode.value, self.source.value = COMPLETE, IMAGE_MASK
        if pick(self.sparse_layer, layer):
            self.mask_layer.value = NAN_MASK if gaps else ZERO_MASK
            if gaps:
                said = f"has {gaps} NaN pixels ({100 * gaps / layer.data.size:.1f} %),"
            else:
                said = (
                    f"is exactly 0 at {100 * zeros:.1f} % of its pixels, like a scan saved "
                    "zero-filled; they are"
                )
            back = (
                ""
                if gaps
                else f" If it is a full image whose zeros were measured, choose Mode '{SIMULATE}'."
            )
            grid = _grid_note(layer)
            self._say(
                f"Ready: {layer.name} {said} read as not measured: Run fills them.{back}{grid}"
            )
        return True

    def _prefer_sparse_layer(self):
        """Point 'Sparse image' and 'Scan points' at a scan our reader opened (e.g. a Direct
        Electron random scan), and switch to 'Complete measured data' when one has just arrived."""
        for widget, kind in (
            (self.sparse_layer, napari.layers.Image),
            (self.points_layer, napari.layers.Points),
        ):
            current = widget.value
            if current is not None and _is_scan(current):
                continue
            scans = [la for la in self.viewer.layers if isinstance(la, kind) and _is_scan(la)]
            if scans:
                widget.value = scans[-1]
                if kind is napari.layers.Image and self.mode.value == SIMULATE and not self.busy:
                    self.mode.value = COMPLETE

    def _sync_visibility(self, *_):
        simulate = self.mode.value == SIMULATE
        points = self.source.value == POINTS
        for w in self._simulate:
            w.visible = simulate
        self.source.visible = not simulate
        for w in (self.sparse_layer, self.mask_layer):
            w.visible = not simulate and not points
        for w in (self.points_layer, self.feature):
            w.visible = not simulate and points

    def _on_mode(self, *_):
        self._sync_visibility()
        self._say("Ready.")
        if self.mode.value == SIMULATE:
            self.update_preview()

    # -- live mask preview (Simulate) -------------------------------------------------------------
    def preview_name(self, layer) -> str:
        return f"{layer.name} scan mask"

    def _schedule_preview(self, *_):
        self._preview_timer.start()

    def update_preview(self, *_):
        """Draw the mask the current kind/coverage/seed would scan (main thread, cheap)."""
        self._preview_timer.stop()
        layer = self.image_layer.value
        if self.mode.value != SIMULATE or layer is None:
            return
        if layer.rgb or layer.ndim != 2:
            self._say(f"Layer {layer.name!r} is not a single 2D grey image; Simulate needs one.")
            return
        try:
            mask = scan_mask(
                self.kind.value,
                layer.data.shape,
                self.coverage.value / 100.0,
                seed=int(self.seed.value),
            )
        except ValueError as err:
            self._say(str(err))
            return
        self.upsert(
            self.preview_name(layer),
            "labels",
            mask.astype(np.uint8),
            opacity=0.6,
            **physical_kwargs(layer, 2),
        )
        if not self.busy:
            self._say(
                f"{self.kind.value} scan measures {100 * mask.mean():.2f} % of the pixels "
                f"(1 in {1 / max(mask.mean(), 1e-9):.1f})."
            )

    # -- run ---------------------------------------------------------------------------------------
    @staticmethod
    def _grey(layer, what: str):
        if layer is None:
            raise ValueError(f"Pick the {what} layer first.")
        if getattr(layer, "rgb", False):
            raise ValueError(
                f"Layer {layer.name!r} is an RGB picture; the completer needs a grey image."
            )
        return layer

    def _simulate_plan(self) -> _Plan:
        layer = self._grey(self.image_layer.value, "full image")
        if layer.ndim != 2:
            raise ValueError(
                f"Layer {layer.name!r} has {layer.ndim} dimensions; Simulate needs a "
                "single 2D image."
            )
        if _nan_count(layer.data):
            raise ValueError(
                f"Layer {layer.name!r} has NaN pixels: it is a sparse scan, not a full image. "
                f"Choose Mode '{COMPLETE}' with Mask '{NAN_MASK}' to fill them."
            )
        coverage = float(self.coverage.value) / 100.0
        mask = scan_mask(self.kind.value, layer.data.shape, coverage, seed=int(self.seed.value))
        params = {
            "mode": "simulate",
            "scan_kind": self.kind.value,
            "coverage": coverage,
            "mask_seed": int(self.seed.value),
        }

        def prepare(truth):
            values, m = check_sparse(np.where(mask, truth, 0), mask)
            return values, m, truth

        return _Plan(layer, params, True, prepare, {"truth": layer})

    def _complete_plan(self) -> _Plan:
        if self.source.value == IMAGE_MASK:
            layer = self._grey(self.sparse_layer.value, "sparse image")
            if self.mask_layer.value == NAN_MASK:

                def prepare_nan(values):
                    return (*check_sparse(values, np.isfinite(values)), None)

                nan_params = {"mode": "complete", "mask_layer": NAN_MASK}
                return _Plan(layer, nan_params, False, prepare_nan, {"values": layer})
            if self.mask_layer.value == ZERO_MASK:

                def prepare_zero(values):
                    return (*check_sparse(values, np.isfinite(values) & (values != 0)), None)

                zero_params = {"mode": "complete", "mask_layer": ZERO_MASK}
                return _Plan(layer, zero_params, False, prepare_zero, {"values": layer})
            mask_layer = self._grey(self.mask_layer.value, "mask")
            params = {"mode": "complete", "mask_layer": mask_layer.name}

            def prepare(values, mask):
                m = check_mask(values.shape, mask)
                return (*check_sparse(values, m), None)

            return _Plan(layer, params, False, prepare, {"values": layer, "mask": mask_layer})
        points = self.points_layer.value
        if points is None:
            raise ValueError("Pick the scan points layer first.")
        column = self.feature.value
        if column is None or column not in points.features:
            raise ValueError(
                f"Points layer {points.name!r} has no numeric feature picked for the "
                "measured values; add one (e.g. 'intensity') and pick it."
            )
        if points.ndim != 2:
            raise ValueError(
                f"Points layer {points.name!r} is {points.ndim}D; scan positions must be 2D."
            )
        # a scan our reader opened knows its full grid; otherwise the positions' bounding box
        shape = (points.metadata or {}).get("napari_microml", {}).get("scan_shape")
        grid, measured = rasterise(
            np.asarray(points.data), points.features[column].to_numpy(float), shape
        )  # a Points layer's data are always in memory
        params = {
            "mode": "complete",
            "points_layer": points.name,
            "value_feature": column,
            "n_positions": int(len(points.data)),
        }

        def prepare_points():
            return (*check_sparse(grid, measured), None)

        return _Plan(points, params, True, prepare_points, {})

    def make_job(self) -> Job:
        from napari_microml.completion.complete import complete_scan_iter

        plan = self._simulate_plan() if self.mode.value == SIMULATE else self._complete_plan()
        kwargs = dict(
            model=self.model.value,
            device=self.device_choice.value,
            sigma=self.sigma.value,
            input_name=plan.source.name,
        )

        mask = plan.inputs.get("mask")
        mask_name = f"Mask {mask.name}" if mask is not None else ""

        def work(**arrays):
            values, mask, truth = plan.prepare(**arrays)
            result = yield from complete_scan_iter(values, mask, **kwargs)
            # everything the result handler draws is computed here, off the GUI thread
            measured = values[mask]
            run = _Run(
                result=result,
                coverage=float(mask.mean()),
                limits=_limits(measured.min(), measured.max()),
                sigma_limits=_limits(0, result.uncertainty.max()),
                median_sigma=float(np.median(result.uncertainty[~result.mask])),
                sparse=np.where(mask, values, 0) if plan.sparse_layer else None,
                outside=_outside_sentence(mask),
            )
            if "mask" in arrays:  # a mask layer as the user gave it
                run.weights = weights_sentence(np.asarray(arrays["mask"]), name=mask_name)
            if truth is not None:
                run.error = np.abs(result.image - truth)
                run.rms = 100.0 * relative_rms(result.image, truth, result.mask)
            return run

        return Job(work, partial(self._show_run, plan), inputs=plan.inputs)

    def _show_run(self, plan: _Plan, run: _Run) -> None:
        result, name = run.result, plan.source.name
        phys = physical_kwargs(plan.source, result.image.ndim)
        record = dict(result.provenance)
        params = {"coverage": run.coverage, **plan.params}
        record["parameters"] = {**(record.get("parameters") or {}), **params}
        record["input_layer"] = name
        meta = self.provenance_metadata(record)
        grey: dict[str, Any] = dict(colormap="gray", contrast_limits=run.limits)
        # one layer per event-loop turn (self.later): adding a layer costs 0.1-0.3 s
        add: list[tuple[str, str, Any, dict[str, Any]]] = []
        if run.sparse is not None:
            add.append((f"{name} sparse", "image", run.sparse, dict(metadata=meta, **grey)))
        add.append(
            (
                f"{name} uncertainty",
                "image",
                result.uncertainty,
                dict(colormap="magma", contrast_limits=run.sigma_limits, metadata=meta),
            )
        )
        what = {
            "measurement": "1σ of a re-scan",
            "signal": "1σ of the noise-free signal",
        }.get(result.sigma, result.sigma)
        message = (
            f"Done: filled the {100 * (~result.mask).mean():.1f} % unmeasured pixels by "
            f"{_method_note(result)}; the uncertainty layer shows {what} "
            f"(median {run.median_sigma:.3g}).{run.outside}"
        )
        if run.outside.startswith(" Every pixel"):  # nothing was filled between measurements
            message = (
                f"Done:{run.outside} The layers show them filled by {_method_note(result)}, "
                f"with {what} as their uncertainty (median {run.median_sigma:.3g})."
            )
        if run.weights:
            message += f" {run.weights}"
        message += _grid_note(plan.source)
        completed_meta = meta
        if run.error is not None:
            add.append(
                (
                    self.preview_name(plan.source),
                    "labels",
                    result.mask.astype(np.uint8),
                    dict(opacity=0.6),
                )
            )
            completed_meta = {KEY: {**record, "rms_error_unmeasured_percent": run.rms}}
            add.append(
                (
                    f"{name} |error|",
                    "image",
                    run.error,
                    dict(
                        colormap="inferno",
                        contrast_limits=_limits(0, run.error.max()),
                        metadata=meta,
                    ),
                )
            )
            message = (
                f"RMS error at unmeasured pixels: {run.rms:.2f} % of the image range "
                f"({params['scan_kind']}, {100 * result.mask.mean():.2f} % measured, filled by "
                f"{_method_note(result)}; uncertainty = {what})."
            )
        add.append(
            (f"{name} completed", "image", result.image, dict(metadata=completed_meta, **grey))
        )
        first = f"{name} completed" not in self.viewer.layers
        for layer_name, kind, data, kw in add:
            self.later(partial(self.upsert, layer_name, kind, data, **kw, **phys))
        if first:  # the scan grid can be larger than what the camera shows (e.g. a movie's frames)
            self.later(self.viewer.reset_view)
        self.later(lambda: self._say(message))


def _outside_sentence(mask: np.ndarray) -> str:
    """' N of them lie outside the rows/columns the scan covered: extrapolated, …' when the
    measured pixels leave a border (a random scan of an ROI inside a larger grid), else ''."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return ""
    box = np.zeros_like(mask, dtype=bool)
    box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    outside = int((~box).sum())
    if not outside:
        return ""
    if mask[box].all():  # e.g. a Direct Electron ROI scanned in random order: a full raster
        return (
            f" Every pixel inside the scanned region (rows {rows[0]}–{rows[-1]}, columns "
            f"{cols[0]}–{cols[-1]}: {int(box.sum())} px) was measured, so there was nothing to "
            f"complete there; the other {outside} pixels of the {mask.shape[0]} × "
            f"{mask.shape[1]} scan grid lie outside it and were never scanned: they are "
            "extrapolated, not measured."
        )
    return (
        f" {outside} of them lie outside the rows {rows[0]}–{rows[-1]} and columns "
        f"{cols[0]}–{cols[-1]} the scan covered: they are extrapolated, not interpolated "
        "(see their uncertainty)."
    )


def _nan_count(data) -> int:
    """NaN pixels of an image in memory (0 for a lazy one: not read on the GUI thread)."""
    if not isinstance(data, np.ndarray) or data.dtype.kind != "f":
        return 0
    return int(np.isnan(data).sum())


def _grid_note(layer) -> str:
    """' The grid … is as large as the furthest measured position …' for a scan our reader
    read from a CSV that declares no scan size, else ''."""
    note = undeclared_grid_note(getattr(layer, "metadata", None), np.shape(layer.data))
    return " " + note if note else ""


def _zero_filled_fraction(data) -> float:
    """The fraction of pixels exactly 0 when a 2D image in memory is 0 at most of them (a scan
    saved zero-filled), else 0.0. An electron-counting frame (most non-zero pixels 1-3 counts)
    is not one."""
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype.kind not in "iuf":
        return 0.0
    zero = data == 0
    fraction = float(zero.mean())
    if fraction < ZERO_FILLED_FRACTION or zero.all():
        return 0.0
    values = data[~zero]
    if data.dtype.kind in "iu" and np.median(values) <= 3:
        return 0.0
    # a measured signal takes many values; a scan mask (0/1, or a blurred trace's few levels) not
    if np.unique(values[:: max(1, values.size // 100_000)]).size <= MASK_LEVELS:
        return 0.0
    return fraction


def _is_scan(layer) -> bool:
    """A layer our reader made from a sparse acquisition (e.g. a Direct Electron random scan)."""
    record = (getattr(layer, "metadata", None) or {}).get("napari_microml") or {}
    return bool(isinstance(record, dict) and record.get("sparse_scan"))


def _limits(lo, hi) -> tuple[float, float]:
    """Contrast limits napari accepts (hi > lo) for a rerun's new data range."""
    lo, hi = float(lo), float(hi)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)
