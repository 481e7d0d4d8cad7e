"""Partial-scan completer dock widget: simulate a sparse scan of a full image, or complete data
that was measured sparsely (sparse image + mask, or scan positions with values)."""
from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import ComboBox, FloatSlider, SpinBox, create_widget

from napari_microml.completion.masks import MASK_KINDS, scan_mask
from napari_microml.completion.metrics import relative_rms
from napari_microml.completion.scan_io import check_sparse, rasterise
from napari_microml.runtime.provenance import KEY
from napari_microml.runtime.widget import ToolWidget, physical_kwargs, upsert_layer

SIMULATE, COMPLETE = "Simulate", "Complete measured data"
IMAGE_MASK, POINTS = "sparse image + mask", "scan points + values"


def _model_choices() -> list[str]:
    from napari_microml.nets.registry import list_models

    from napari_microml.completion.complete import LOCAL_GP

    names = [n.removeprefix("completion-") for n in list_models("completion")]
    return (sorted(names, key=lambda n: n != "default") or ["default"]) + [LOCAL_GP]


class ScanCompleterWidget(ToolWidget):
    """Fill in the unmeasured pixels of a partial (sparse) scan, with a per-pixel uncertainty."""

    tool_name = "scan_completer"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self._ctx: dict = {}
        self.mode = ComboBox(label="Mode", choices=[SIMULATE, COMPLETE], value=SIMULATE)
        # -- Simulate: a full image, scanned sparsely by a mask we draw ---------------------------
        self.image_layer = create_widget(annotation=napari.layers.Image, label="Full image")
        self.kind = ComboBox(label="Scan kind", choices=list(MASK_KINDS), value="spiral")
        self.coverage = FloatSlider(label="Coverage (%)", value=5.6, min=1.0, max=50.0, step=0.1,
                                    tooltip="Percent of pixels measured: 5.6 % = 1 pixel in 17.9")
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        # -- Complete: data measured sparsely --------------------------------------------------
        self.source = ComboBox(label="Measured as", choices=[IMAGE_MASK, POINTS], value=IMAGE_MASK)
        self.sparse_layer = create_widget(annotation=napari.layers.Image, label="Sparse image")
        self.mask_layer = ComboBox(label="Mask", choices=self._mask_choices,
                                   tooltip="Labels or image layer; non-zero = measured pixel")
        self.points_layer = create_widget(annotation=napari.layers.Points, label="Scan points")
        self.feature = ComboBox(label="Value feature", choices=self._feature_choices,
                                tooltip="The points' feature holding the measured value")
        self.model = ComboBox(label="Model", choices=_model_choices(),
                              tooltip="default: GAN-refined network (fast); pixel: pixel-loss network; "
                                      "local-gp: kriging, no network (seconds; best on smooth, very sparse scans)")
        self._simulate = [self.image_layer, self.kind, self.coverage, self.seed]
        self._complete = [self.source, self.sparse_layer, self.mask_layer, self.points_layer,
                          self.feature]
        super().__init__(viewer, [self.mode, *self._simulate, *self._complete, self.model])

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

    # -- choices / visibility ------------------------------------------------------------------
    def _mask_choices(self, *_):
        """Labels and grey image layers; Labels and layers named '*mask*' first (the default)."""
        layers = [layer for layer in self.viewer.layers
                  if isinstance(layer, (napari.layers.Labels, napari.layers.Image))
                  and not getattr(layer, "rgb", False)]
        layers.sort(key=lambda la: (not isinstance(la, napari.layers.Labels), "mask" not in la.name.lower()))
        return [(layer.name, layer) for layer in layers]

    def _feature_choices(self, *_):
        layer = self.points_layer.value if hasattr(self, "points_layer") else None
        if layer is None:
            return []
        return [c for c in layer.features.columns if np.issubdtype(layer.features[c].dtype, np.number)]

    def _on_layers_changed(self, *_):
        self.reset_choices()

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
            mask = scan_mask(self.kind.value, layer.data.shape, self.coverage.value / 100.0,
                             seed=int(self.seed.value))
        except ValueError as err:
            self._say(str(err))
            return
        upsert_layer(self.viewer, self.preview_name(layer), "labels", mask.astype(np.uint8),
                     opacity=0.6, **physical_kwargs(layer, 2))
        if not self.busy:
            self._say(f"{self.kind.value} scan measures {100 * mask.mean():.2f} % of the pixels "
                      f"(1 in {1 / max(mask.mean(), 1e-9):.1f}).")

    # -- run ---------------------------------------------------------------------------------------
    @staticmethod
    def _grey(layer, what: str):
        if layer is None:
            raise ValueError(f"Pick the {what} layer first.")
        if getattr(layer, "rgb", False):
            raise ValueError(f"Layer {layer.name!r} is an RGB picture; the completer needs a grey image.")
        return layer

    def _simulate_inputs(self) -> dict:
        layer = self._grey(self.image_layer.value, "full image")
        if layer.ndim != 2:
            raise ValueError(f"Layer {layer.name!r} has {layer.ndim} dimensions; Simulate needs a "
                             "single 2D image.")
        truth = np.asarray(layer.data, np.float32)
        coverage = float(self.coverage.value) / 100.0
        mask = scan_mask(self.kind.value, truth.shape, coverage, seed=int(self.seed.value))
        values, mask = check_sparse(np.where(mask, truth, 0), mask)
        params = {"mode": "simulate", "scan_kind": self.kind.value, "coverage": coverage,
                  "mask_seed": int(self.seed.value)}
        return dict(source=layer, name=layer.name, values=values, mask=mask, truth=truth,
                    params=params, sparse_layer=True)

    def _complete_inputs(self) -> dict:
        if self.source.value == IMAGE_MASK:
            layer = self._grey(self.sparse_layer.value, "sparse image")
            mask_layer = self._grey(self.mask_layer.value, "mask")
            values, mask = check_sparse(np.asarray(layer.data), np.asarray(mask_layer.data))
            params = {"mode": "complete", "mask_layer": mask_layer.name,
                      "coverage": float(mask.mean())}
            return dict(source=layer, name=layer.name, values=values, mask=mask, params=params,
                        sparse_layer=False)
        points = self.points_layer.value
        if points is None:
            raise ValueError("Pick the scan points layer first.")
        column = self.feature.value
        if column is None or column not in points.features:
            raise ValueError(f"Points layer {points.name!r} has no numeric feature picked for the "
                             "measured values; add one (e.g. 'intensity') and pick it.")
        if points.ndim != 2:
            raise ValueError(f"Points layer {points.name!r} is {points.ndim}D; scan positions must be 2D.")
        grid, measured = rasterise(np.asarray(points.data), points.features[column].to_numpy(float))
        values, mask = check_sparse(grid, measured)
        params = {"mode": "complete", "points_layer": points.name, "value_feature": column,
                  "n_positions": int(len(points.data)), "coverage": float(mask.mean())}
        return dict(source=points, name=points.name, values=values, mask=mask, params=params,
                    sparse_layer=True)

    def make_job(self):
        from napari_microml.completion.complete import complete_scan_iter

        ctx = self._simulate_inputs() if self.mode.value == SIMULATE else self._complete_inputs()
        values, mask = ctx["values"], ctx["mask"]
        kwargs = dict(model=self.model.value, device=self.device_choice.value, input_name=ctx["name"])
        self._ctx = ctx

        def job():
            return (yield from complete_scan_iter(values, mask, **kwargs))

        return job

    def show_result(self, result):
        ctx, name = self._ctx, self._ctx["name"]
        phys = physical_kwargs(ctx["source"], result.image.ndim)
        record = dict(result.provenance)
        record["parameters"] = {**(record.get("parameters") or {}), **ctx["params"]}
        record["input_layer"] = name
        meta = self.provenance_metadata(record)
        measured = ctx["values"][ctx["mask"]]
        grey = dict(colormap="gray", contrast_limits=_limits(measured.min(), measured.max()))
        if ctx["sparse_layer"]:
            upsert_layer(self.viewer, f"{name} sparse", "image", np.where(ctx["mask"], ctx["values"], 0),
                         metadata=meta, **grey, **phys)
        upsert_layer(self.viewer, f"{name} uncertainty", "image", result.uncertainty, colormap="magma",
                     contrast_limits=_limits(0, result.uncertainty.max()), metadata=meta, **phys)
        message = (f"Done: filled the {100 * (~result.mask).mean():.1f} % unmeasured pixels; "
                   "see the uncertainty layer for where to trust them.")
        completed_meta = meta
        if "truth" in ctx:
            truth = ctx["truth"]
            upsert_layer(self.viewer, self.preview_name(ctx["source"]), "labels",
                         result.mask.astype(np.uint8), opacity=0.6, **phys)
            error = np.abs(result.image - truth)
            rms = 100.0 * relative_rms(result.image, truth, result.mask)
            completed_meta = {KEY: {**record, "rms_error_unmeasured_percent": rms}}
            upsert_layer(self.viewer, f"{name} |error|", "image", error, colormap="inferno",
                         contrast_limits=_limits(0, error.max()), metadata=meta, **phys)
            message = (f"RMS error at unmeasured pixels: {rms:.2f} % of the image range "
                       f"({ctx['params']['scan_kind']}, {100 * result.mask.mean():.2f} % measured).")
        upsert_layer(self.viewer, f"{name} completed", "image", result.image, metadata=completed_meta,
                     **grey, **phys)
        self._say(message)


def _limits(lo, hi) -> tuple[float, float]:
    """Contrast limits napari accepts (hi > lo) for a rerun's new data range."""
    lo, hi = float(lo), float(hi)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)
