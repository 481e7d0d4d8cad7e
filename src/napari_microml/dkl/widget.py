"""napari dock widget for DKL active learning (thin: all logic lives in ``dkl.learner``).

Workflow: pick the structure image and the measurement source (a spectrum-image layer with
a scalarizer window in the axis's units, or a scalar-map layer), press **Initialize** (one
point per kind of structure patch: the learner's "diverse" initial design), then
**Step** (measure the points of the editable "next" layer: drag or delete them first to veto
the model) or **Run** (steps until the budget; the button becomes Cancel = Stop between steps).

Each job reads the layers' data and builds the learner in the worker thread; Initialize and
Step are one ``suggest``/``observe`` of the learner, Run drives the core's
``run_campaign_iter``. A job works on a copy of the campaign and hands it back in
:class:`Snapshot` results (``Partial`` messages during a Run); the widget adopts a snapshot's
campaign only once it is on screen (main thread), so a Stop keeps the last step shown.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import napari
import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
)

from napari_microml.dkl.acquisition import ACQUISITIONS
from napari_microml.dkl.scalarizers import SCALARIZERS, LoopArea, WindowRatio, window_mask
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.spectral import (
    SpectralAxis,
    sample_spectra,
    spectra_last,
    spectral_axis,
    spectral_layer,
)
from napari_microml.runtime.widget import (
    Job,
    ToolWidget,
    layer_picker,
    opened_from_file,
    physical_kwargs,
    pick,
    preload,
)
from napari_microml.runtime.workers import Partial, Progress

SOURCE_KINDS = ("spectrum image", "scalar map")
MAPS = (
    ("DKL mean", "mean", "magma"),
    ("DKL uncertainty", "std", "gray"),
    ("acquisition", "acquisition", "inferno"),
)


@dataclass
class Snapshot:
    """What one Initialize/Step leaves on screen (copies made in the worker)."""

    learner: object
    source: object
    key: tuple
    coords: np.ndarray
    values: np.ndarray
    next: np.ndarray
    mean: np.ndarray | None
    std: np.ndarray | None
    acquisition: np.ndarray | None
    best: float
    step: int
    spectrum: np.ndarray | None
    axis: np.ndarray | None
    device: str
    context: RunContext


@dataclass(frozen=True)
class RunContext:
    """The settings a run was started with (read on the GUI thread when it starts)."""

    structure: Any  # the structure layer: the maps take its scale
    parameters: dict
    seed: int
    units: str
    window: tuple[float, float]
    scalarizer: str
    maximize: bool
    grid: Any = None  # the source layer, when the structure was resampled onto its pixels
    resampled: str = ""  # the sentence that says so

    @property
    def plane(self) -> dict:
        """``plane_kwargs`` of the pixel grid the maps and points are on."""
        return plane_kwargs(self.grid if self.grid is not None else self.structure)


def structure_from_spectra(cube: np.ndarray, *, despike: int = 9) -> np.ndarray:
    """A structure image from a spectrum image: the mean over the spectral axis after a running
    median along it, so spikes (BEPS loops: ~1 % of values, in runs of a few channels) do not
    make bright pixels.

    Parameters
    ----------
    cube : (H, W, C) array
        The spectrum image, spectral axis last.
    despike : int
        Length (channels) of the running median.

    Returns
    -------
    (H, W) float64 array, in the spectra's units.
    """
    from scipy.ndimage import median_filter

    cube = np.asarray(cube, float)
    size = min(int(despike), cube.shape[-1])
    return median_filter(cube, size=(1, 1, size), mode="nearest").mean(axis=-1)


def area_resample(image: np.ndarray, *, shape: tuple[int, ...]) -> np.ndarray:
    """``image`` on a ``shape`` grid of the same field: the mean of each block of pixels for a
    whole-number ratio (a 2× sampled HAADF gives back its 1× pixels), else an anti-aliased
    linear resize.

    Parameters
    ----------
    image : ndarray (H, W)
        The finer (or coarser) image.
    shape : (int, int)
        The target grid's rows and columns.

    Returns
    -------
    ndarray (shape)
        float32.
    """
    from skimage.transform import downscale_local_mean, resize

    factors = [n / m for n, m in zip(image.shape, shape, strict=True)]
    if all(f >= 1 and f == int(f) for f in factors):
        return downscale_local_mean(image, tuple(int(f) for f in factors)).astype(np.float32)
    return resize(image, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)


def plane_kwargs(layer) -> dict:
    """``physical_kwargs`` of a layer's image plane (a spectrum image without its spectral
    axis)."""
    if layer is None or layer.ndim == 2 or not spectral_layer(layer):
        return physical_kwargs(layer, 2)
    index = cast(SpectralAxis, spectral_axis(layer.metadata, layer.data.shape)).index
    full = physical_kwargs(layer)
    return {k: tuple(v[i] for i in range(layer.ndim) if i != index) for k, v in full.items()}


def value_unit(context: RunContext) -> str:
    """The units of one measurement's value ('' for a scalar map or a ratio)."""
    u = context.units
    counts = "counts" if u == "eV" else "a.u."  # EELS holds counts; PFM loops a response
    if context.parameters.get("source") == "scalar map":
        return ""
    return {
        "peak height": counts,
        "peak area": f"{counts}·{u}",
        "peak centroid": u,
        "edge intensity": f"{counts}·{u}",
        "loop area": f"{u} × {counts}",
    }.get(context.scalarizer, "")


def best_sentence(snap) -> str:
    """'highest edge intensity (931–991 eV) 7.887e+04 counts·eV, at x = …, y = … nm': the best
    measured point, in the structure image's units."""
    ctx = snap.context
    if not len(snap.values):
        return "nothing measured yet"
    i = int(np.argmax(snap.values) if ctx.maximize else np.argmin(snap.values))
    row, col = (float(c) for c in snap.coords[i])
    phys = ctx.plane
    scale, shift = phys.get("scale", (1.0, 1.0)), phys.get("translate", (0.0, 0.0))
    unit = str(phys.get("units", ("px", "px"))[-1])
    unit = {"pixel": "px", "nanometer": "nm", "micrometer": "µm"}.get(unit, unit)
    y, x = (c * float(k) + float(t) for c, k, t in zip((row, col), scale, shift, strict=True))
    if ctx.parameters.get("source") == "scalar map":
        what = "value"
    elif ctx.scalarizer == "loop area":
        what = "loop area"
    else:
        lo, hi = ctx.window
        what = f"{ctx.scalarizer} ({lo:.4g}–{hi:.4g} {ctx.units})"
    value = f"{snap.values[i]:.4g} {value_unit(ctx)}".rstrip()
    highest = "highest" if ctx.maximize else "lowest"
    return f"{highest} {what} {value}, at x = {x:.4g} {unit}, y = {y:.4g} {unit}"


def _fork(source):
    """A copy of a replay source sharing its read-only data: measuring marks pixels revealed
    and keeps the last spectra, which must not change the widget's campaign mid-run."""
    out = copy.copy(source)
    if isinstance(getattr(out, "revealed", None), np.ndarray):
        out.revealed = out.revealed.copy()
    return out


class ActiveLearningWidget(ToolWidget):
    """Deep-kernel-learning active learning: where to measure next on a structure image."""

    tool_name = "dkl_active_learning"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.structure_layer = layer_picker(
            napari.layers.Image,
            label="Structure",
            options={
                "tooltip": "2D image (e.g. HAADF) whose pixels are the candidate "
                "measurement sites; results use its pixel size (nm)."
            },
        )
        self.source_kind = ComboBox(
            label="Source",
            choices=list(SOURCE_KINDS),
            value="spectrum image",
            tooltip="spectrum image: a scalarizer turns each measured spectrum into one value; "
            "scalar map: the layer already holds one value per pixel.",
        )
        self.source_layer = layer_picker(
            napari.layers.Image,
            label="Source layer",
            options={
                "tooltip": "The recorded measurements replayed point by point: a spectrum "
                "image over the same pixels as the structure (energy as a "
                "slider) or a 2D map."
            },
        )
        self.scalarizer = ComboBox(
            label="Scalarizer",
            choices=list(SCALARIZERS),
            value="peak area",
            tooltip="How a spectrum becomes the value to optimise: area/height/centroid in the "
            "window, ratio of two windows, edge above a power-law background, or "
            "hysteresis-loop area (the spectral axis in V).",
        )
        spin: dict[str, Any] = dict(min=-1e9, max=1e9, step=1.0)
        self.win_lo = FloatSpinBox(label="Window from", value=0.0, **spin)
        self.win_hi = FloatSpinBox(label="Window to", value=10.0, **spin)
        self.win2_lo = FloatSpinBox(label="2nd window from", value=10.0, **spin)
        self.win2_hi = FloatSpinBox(label="2nd window to", value=20.0, **spin)
        self.patch_size = SpinBox(
            label="Patch size (px)",
            value=0,
            min=0,
            max=128,
            tooltip="Side of the image patch (structure pixels) the model sees around each "
            "pixel. 'auto' (0) mixes 8, 16 and 24 px, weighted by how well each "
            "predicts the measurements so far.",
        )
        self.patch_size.native.setSpecialValueText("auto")
        self.acquisition = ComboBox(
            label="Acquisition",
            choices=list(ACQUISITIONS),
            value="ts",
            tooltip="Where to measure next: ts Thompson sampling, ei expected improvement, "
            "ucb upper confidence bound, pi probability of improvement, uncertainty "
            "(explore only), random.",
        )
        self.maximize = CheckBox(
            label="Maximize", value=True, tooltip="Look for high values (on) or low values (off)."
        )
        self.batch_size = SpinBox(
            label="Batch size",
            value=1,
            min=1,
            max=256,
            tooltip="Points (pixels) measured per Step.",
        )
        self.budget = SpinBox(
            label="Budget",
            value=30,
            min=1,
            max=10_000_000,
            tooltip="Total number of measurements (pixels), initial ones "
            "included; Run stops there.",
        )
        self.n_initial = SpinBox(
            label="Initial points",
            value=5,
            min=1,
            max=100_000,
            tooltip="Pixels measured by Initialize, one per kind of "
            "structure patch, before the model is used.",
        )
        self.seed = SpinBox(
            label="Seed",
            value=0,
            min=0,
            max=2**31 - 1,
            tooltip="Seeds the initial design, the networks and Thompson "
            "samples: the same seed repeats a campaign.",
        )
        self.init_button = PushButton(text="Initialize")
        self.step_button = PushButton(text="Step")
        self.stop_button = PushButton(text="Stop")
        self.init_button.tooltip = "Start a new campaign: measure the initial points."
        self.step_button.tooltip = (
            "Measure the points of the 'next' layer (edit them first to "
            "veto the model), then suggest new ones."
        )
        self.stop_button.tooltip = "Stop a Run after the current step; measurements are kept."
        self.log_path = FileEdit(
            label="Log file",
            mode=FileDialogMode.OPTIONAL_FILE,
            filter="*.csv *.json",
            tooltip="Where Export log writes every measurement (.csv or "
            ".json; row, col in pixels).",
        )
        self.overwrite = CheckBox(
            label="Overwrite an existing file",
            value=False,
            tooltip="Export log replaces a file of that name only when this is ticked.",
        )
        self.export_button = PushButton(text="Export log")
        buttons = Container(
            widgets=[self.init_button, self.step_button, self.stop_button],
            layout="horizontal",
            labels=False,
        )
        controls = [
            self.structure_layer,
            self.source_kind,
            self.source_layer,
            self.scalarizer,
            self.win_lo,
            self.win_hi,
            self.win2_lo,
            self.win2_hi,
            self.patch_size,
            self.acquisition,
            self.maximize,
            self.batch_size,
            self.budget,
            self.n_initial,
            self.seed,
            buttons,
        ]
        super().__init__(viewer, controls)
        self.extend([self.log_path, self.overwrite, self.export_button])
        self.run_button.tooltip = "Step until the budget is spent (the button then stops)."
        self.device_choice.tooltip = "Where the networks run: auto picks a GPU when present."
        self.learner: Any = None  # the campaign on screen (adopted from a run's snapshot)
        self._grid: tuple[Any, str] = (None, "")  # the campaign's pixel grid when resampled
        self.source: Any = None
        self._key: tuple | None = None
        self._mode = "run"
        self._units = "channel"
        self.history: list[tuple[int, float]] = []
        self.init_button.changed.connect(lambda *_: self._start_mode("init"))
        self.step_button.changed.connect(lambda *_: self._start_mode("step"))
        self.stop_button.changed.connect(lambda *_: self.cancel())
        self.export_button.changed.connect(self.export_log)
        self.source_kind.changed.connect(self._update_visibility)
        self.scalarizer.changed.connect(self._update_visibility)
        self.source_layer.changed.connect(self._on_source_layer)
        self._window_source: Any = None  # the layer whose default window is set
        self._make_plot()
        self._update_visibility()
        self._prefer_spectrum_image()
        self._on_source_layer()
        viewer.layers.events.inserted.connect(self._prefer_spectrum_image)
        preload(
            "torch",
            "torch.optim",
            "torch._dynamo",
            "gpytorch",
            "pandas",
            "scipy.cluster.vq",
            "scipy.linalg",
            "napari_microml.dkl.learner",
        )  # pandas: napari's Points layers

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
        self._label_windows()

    def _label_windows(self):
        u = self._units
        second = (
            "pre-edge background" if self.scalarizer.value == "edge intensity" else "denominator"
        )
        self.win_lo.label, self.win_hi.label = f"Window from ({u})", f"Window to ({u})"
        self.win2_lo.label = f"2nd window from ({u})"
        self.win2_hi.label = f"2nd window to ({u})"
        for w in (self.win_lo, self.win_hi):
            w.tooltip = (
                f"Spectral window ({u}) the scalarizer reads "
                f"(area, height or centroid; the numerator of a ratio; the edge)."
            )
        for w in (self.win2_lo, self.win2_hi):
            w.tooltip = f"Second spectral window ({u}): the {second} window."

    def _on_source_layer(self, *_):
        """Adopt the source layer's spectral axis: units on the window labels, ranges and a
        window inside the axis when the current one misses it."""
        layer = self.source_layer.value
        if layer is None:
            return
        shape = layer.data.shape
        ax = spectral_axis(layer.metadata, shape)
        if ax is None and len(shape) == 2:
            self.source_kind.value = "scalar map"
            return
        self.source_kind.value = "spectrum image"
        if ax is None:
            return
        self._units = ax.units
        lo, hi = float(ax.values.min()), float(ax.values.max())
        step = float(abs(ax.values[1] - ax.values[0])) if ax.values.size > 1 else 1.0
        for w in (self.win_lo, self.win_hi, self.win2_lo, self.win2_hi):
            w.min, w.max = lo, hi
            w.step = step
        if ax.units == "V":
            self.scalarizer.value = "loop area"
        inside = (
            lo <= min(self.win_lo.value, self.win_hi.value)
            and max(self.win_lo.value, self.win_hi.value) <= hi
            and self.win_hi.value - self.win_lo.value >= step
        )
        if not inside:  # whole axis, and its halves for two-window scalarizers
            mid = lo + step * round((hi - lo) / (2 * step))
            self.win_lo.value, self.win_hi.value = lo, hi
            self.win2_lo.value, self.win2_hi.value = mid, hi
        self._default_window(layer, ax)
        self._update_visibility()

    def _prefer_spectrum_image(self, event=None):
        """While Source and Structure are the same layer (the pickers' default: the first
        image), make Source an open spectrum image and Structure a plain image, so the defaults
        never learn the structure image from itself; a user's distinct choices are kept until
        a file is opened (:meth:`_follow_opened`)."""
        for picker in (self.source_layer, self.structure_layer):
            picker.reset_choices()  # the new layer may not be among the choices yet
        if self._follow_opened(opened_from_file(event)):
            return
        source, structure = self.source_layer.value, self.structure_layer.value
        if source is not None and source is not structure:
            return
        images = [
            lyr
            for lyr in self.viewer.layers
            if isinstance(lyr, napari.layers.Image) and not getattr(lyr, "rgb", False)
        ]
        cubes = [lyr for lyr in images if spectral_layer(lyr) and lyr.ndim >= 3]
        own = {name for name, _, _ in MAPS}  # this tool's maps never become its structure
        plain = [
            lyr
            for lyr in images
            if not spectral_layer(lyr) and lyr.ndim == 2 and lyr.name not in own
        ]
        if cubes:
            self.source_layer.value = cubes[0]
            if plain and structure is cubes[0]:
                self.structure_layer.value = plain[0]

    def _plain_images(self, plane) -> list:
        """Grey 2D images of shape ``plane`` that can be a structure, the newest first."""
        own = {name for name, _, _ in MAPS}  # this tool's maps never become its structure
        return [
            lyr
            for lyr in reversed(self.viewer.layers)
            if isinstance(lyr, napari.layers.Image)
            and not getattr(lyr, "rgb", False)
            and not spectral_layer(lyr)
            and lyr.ndim == 2
            and lyr.name not in own
            and tuple(lyr.data.shape) == tuple(plane)
        ]

    def _follow_opened(self, layer) -> bool:
        """A spectrum image just opened from a file becomes Source, with the newest plain image
        of its plane as Structure (none: its own despiked mean); a plain image opened after it
        replaces that mean. Run otherwise went on with the files before. True when followed."""
        if not isinstance(layer, napari.layers.Image) or getattr(layer, "rgb", False):
            return False
        if spectral_layer(layer) and layer.ndim >= 3:
            match = self._plain_images(self._plane_shape(layer))
            return pick(self.source_layer, layer) and pick(
                self.structure_layer, match[0] if match else layer
            )
        source, structure = self.source_layer.value, self.structure_layer.value
        if (
            layer.ndim == 2
            and not spectral_layer(layer)
            and source is not None
            and structure is not None
            and structure.name == source.name
            and source.ndim >= 3
            and layer.name in {m.name for m in self._plain_images(self._plane_shape(source))}
        ):
            return pick(self.structure_layer, layer)
        return False

    def _default_window(self, layer, ax: SpectralAxis) -> None:
        """On a newly picked spectrum image: the value to optimise is the strongest core-loss
        edge above its power-law background (or the area of the main peak), said on the status
        line."""
        from napari_microml.spectra.preprocess import (
            auto_window,
            edge_quantification_windows,
            signal_type_of,
        )

        if layer is self._window_source:
            return
        if ax.units == "V":  # hysteresis loops: their area, whatever the bias range
            self._window_source = layer
            self._say(
                f"Source {layer.name}: the value to optimise is the area of each pixel's "
                f"hysteresis loop over {ax.values.min():.3g}–{ax.values.max():.3g} V "
                "(V × a.u.), after a median despike along the bias."
            )
            return
        self._window_source = layer
        spectra, _ = sample_spectra(layer.data, layer.metadata)
        choice = auto_window(
            spectra, ax.values, units=ax.units, signal_type=signal_type_of(layer.metadata)
        )
        u = ax.units
        if choice.kind == "edge":
            (s0, s1), (p0, p1) = edge_quantification_windows(choice.edges, ax.values)
            self.scalarizer.value = "edge intensity"
            self.win_lo.value, self.win_hi.value = s0, s1
            self.win2_lo.value, self.win2_hi.value = p0, p1
            what = (
                f"intensity of the strongest edge (onset {choice.position:.4g} {u}): counts·{u} "
                f"over {s0:.4g}–{s1:.4g} {u} above a power law fitted over {p0:.4g}–{p1:.4g} {u}"
            )
            others = [e.onset for e in choice.edges[1:]]
            if others:
                what += "; other edges at " + ", ".join(f"{o:.4g}" for o in others) + f" {u}"
        elif choice.kind == "peak":
            values = ax.values[choice.start : choice.stop]
            self.scalarizer.value = "peak area"
            self.win_lo.value, self.win_hi.value = float(values.min()), float(values.max())
            peak = "X-ray line" if choice.eds else "peak"  # an EDS zero peak is never chosen
            what = (
                f"area of the {peak} at {choice.position:.4g} {u} over "
                f"{values.min():.4g}–{values.max():.4g} {u} (counts·{u})"
            )
        else:
            self._say(
                f"Source {layer.name}: no peak or edge stands out in its mean spectrum, so the "
                "window is the whole axis: set it around the feature to optimise."
            )
            return
        self._say(f"Source {layer.name}: the value to optimise is the {what}.")

    def _make_plot(self):
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            self.figure = None
            return
        self.figure = Figure(figsize=(4, 2.4))  # fixed margins: tight_layout costs a stall
        self.ax_best, self.ax_spec = self.figure.subplots(1, 2)
        self.figure.subplots_adjust(left=0.17, right=0.97, bottom=0.2, top=0.88, wspace=0.45)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.add_native(self.canvas, before=self.log_path.native)  # results before the export
        self.canvas.draw()  # fonts and tick machinery loaded with the dock, not mid-run

    def _start_mode(self, mode: str):
        if self.busy:
            return None
        self._mode = mode
        try:
            return self.start()
        finally:
            self._mode = "run"

    # --- inputs (checked on the GUI thread from shapes only; data read in the worker) -------
    def _structure_layer(self):
        """The structure layer: a 2D grey image, or a spectrum image whose despiked mean over
        its spectral axis stands in for one (:func:`structure_from_spectra`)."""
        layer = self.structure_layer.value
        if layer is None:
            raise ValueError("Choose a structure image layer first.")
        cube = layer.ndim == 3 and spectral_layer(layer)
        if not (layer.ndim == 2 or cube) or getattr(layer, "rgb", False):
            raise ValueError(
                f"The structure layer must be a 2D grey image (or a spectrum image), not "
                f"{tuple(layer.data.shape)}."
            )
        return layer

    def _resample_plan(self, structure, shape) -> tuple[Any, str]:
        """``(source layer, sentence)`` when a 2D structure image of another pixel grid covers
        the same field as the source (a HAADF recorded at 2× the spectrum image's sampling):
        the structure is then resampled onto the source's pixels. ``(None, "")`` when the grids
        already match; a clear refusal when the fields differ or cannot be compared."""
        source = self.source_layer.value
        if source is None or structure.ndim != 2 or source is structure:
            return None, ""
        pixels = self._plane_shape(source) if source.ndim == 3 else tuple(source.data.shape)
        if len(pixels) != 2 or tuple(pixels) == tuple(shape):
            return None, ""
        have, want = plane_kwargs(structure), plane_kwargs(source)
        units = {str(u) for u in (*have.get("units", ()), *want.get("units", ()))}
        size = "×".join(map(str, pixels)), "×".join(map(str, shape))
        if len(units) != 1 or units & {"pixel", "px"}:
            raise ValueError(
                f"The source {source.name} covers {size[0]} px but the structure image "
                f"{structure.name} is {size[1]} px, and without a length calibration on both "
                "they cannot be matched: open a structure image of the same pixels, or pick "
                "the source itself as Structure (its mean is used)."
            )

        def field(kw, n):  # (first edge, last edge) of each axis: pixel centres ± half a step
            return [
                (t - k / 2, t + (m - 0.5) * k)
                for t, k, m in zip(kw["translate"], kw["scale"], n, strict=True)
            ]

        unit = str(next(iter(units)))
        unit = {"nanometer": "nm", "micrometer": "µm"}.get(unit, unit)
        ours, theirs = field(want, pixels), field(have, shape)
        step = min(float(k) for k in want["scale"])
        if any(
            abs(a - c) > step or abs(b - d) > step
            for (a, b), (c, d) in zip(ours, theirs, strict=True)
        ):
            span = " × ".join(f"{b - a:.4g}" for a, b in ours)
            other = " × ".join(f"{d - c:.4g}" for c, d in theirs)
            raise ValueError(
                f"The source {source.name} ({size[0]} px, {span} {unit}) and the structure "
                f"image {structure.name} ({size[1]} px, {other} {unit}) cover different fields; "
                "open a structure image of the same field, or pick the source itself as "
                "Structure (its mean is used)."
            )
        return source, (
            f"Structure {structure.name} ({size[1]} px, {float(have['scale'][-1]):.4g} {unit}/px)"
            f" resampled onto the source's {size[0]} px grid (same field)."
        )

    @staticmethod
    def _plane_shape(layer) -> tuple[int, ...]:
        """The structure's (rows, cols): a spectrum image's shape without its spectral axis."""
        shape = tuple(int(n) for n in layer.data.shape)
        if layer.ndim == 2:
            return shape
        ax = cast(SpectralAxis, spectral_axis(layer.metadata, shape, required=True))
        return tuple(n for i, n in enumerate(shape) if i != ax.index)

    def _make_scalarizer(self, axis):
        name = self.scalarizer.value
        cls = SCALARIZERS[name]
        if name == "window ratio":
            return WindowRatio(
                (self.win_lo.value, self.win_hi.value),
                (self.win2_lo.value, self.win2_hi.value),
                axis=axis,
            )
        if name == "edge intensity":  # second window = pre-edge background fit
            return cls(
                (self.win_lo.value, self.win_hi.value),
                (self.win2_lo.value, self.win2_hi.value),
                axis=axis,
            )
        if name == "loop area":
            return cls(axis=axis)
        return cls((self.win_lo.value, self.win_hi.value), axis=axis)

    def _source_plan(self, shape) -> tuple[Any, Callable[[np.ndarray], Any]]:
        """The source layer and ``make(data)`` → the source, to call in the worker with the
        layer's data; shapes and windows are checked here without reading the data."""
        from napari_microml.dkl.sources import ScalarMapSource, SpectrumImageSource

        layer = self.source_layer.value
        if layer is None:
            raise ValueError("Choose the layer that holds the measurements (source layer).")
        data, meta = layer.data, layer.metadata
        if self.source_kind.value == "scalar map":
            if tuple(data.shape) != tuple(shape):
                raise ValueError(
                    f"The scalar map {tuple(data.shape)} does not match the "
                    f"structure image {tuple(shape)}."
                )
            return layer, ScalarMapSource
        if data.ndim != 3:
            raise ValueError(
                f"A spectrum-image source must be 3D; layer '{layer.name}' has "
                f"shape {tuple(data.shape)}."
            )
        ax = cast(SpectralAxis, spectral_axis(meta, data.shape, required=True))  # shapes only
        pixels = tuple(n for i, n in enumerate(data.shape) if i != ax.index)
        by_hand = not ax.calibrated and tuple(data.shape[1:]) == tuple(shape)
        if by_hand:  # an uncalibrated (E, H, W) array added by hand
            pixels = tuple(data.shape[1:])
            ax = cast(SpectralAxis, spectral_axis(None, (*pixels, data.shape[0]), required=True))
        if pixels != tuple(shape):
            raise ValueError(
                f"The spectrum image covers {pixels} pixels but "
                f"the structure image is {tuple(shape)}; they must match."
            )
        axis = ax.values if ax.calibrated else None
        scal = self._make_scalarizer(axis)
        if self.scalarizer.value != "loop area":
            window_mask(ax.values, (self.win_lo.value, self.win_hi.value))  # clear error

        def make(raw):
            cube = np.moveaxis(raw, 0, -1) if by_hand else spectra_last(raw, meta)[0]
            return SpectrumImageSource(cube, axis=axis, scalarizer=scal)

        return layer, make

    def _settings_key(self):
        return (
            id(self.structure_layer.value),
            id(self.source_layer.value),
            self.source_kind.value,
            self.scalarizer.value,
            self.win_lo.value,
            self.win_hi.value,
            self.win2_lo.value,
            self.win2_hi.value,
            self.patch_size.value,
            self.acquisition.value,
            self.maximize.value,
            self.seed.value,
            self.device_choice.value,
        )

    def _patch(self):
        """The patch size for the learner: 'auto' (the spin box at 0) or a number of pixels."""
        return "auto" if self.patch_size.value == 0 else int(self.patch_size.value)

    def _pending_points(self) -> np.ndarray:
        """Integer (row, col) of the current "next" layer (the user may have edited it)."""
        if "next" not in self.viewer.layers or self.learner is None:
            return np.zeros((0, 2), int)
        layer = self.viewer.layers["next"]
        pts = np.asarray(layer.data, float)
        if pts.size == 0:
            return np.zeros((0, 2), int)
        h, w = self.learner.shape
        rc = np.rint(pts[:, -2:]).astype(int)  # layer data are in structure pixels
        rc[:, 0] = np.clip(rc[:, 0], 0, h - 1)
        rc[:, 1] = np.clip(rc[:, 1], 0, w - 1)
        _, first = np.unique(rc[:, 0] * w + rc[:, 1], return_index=True)
        rc = rc[np.sort(first)]
        measured = set((self.learner.coords[:, 0] * w + self.learner.coords[:, 1]).tolist())
        keep = [i for i, (r, c) in enumerate(rc) if r * w + c not in measured]
        return rc[keep]

    # --- jobs ------------------------------------------------------------------------------
    def make_job(self) -> Job:
        from napari_microml.dkl.learner import ActiveLearner, run_campaign_iter

        mode = self._mode
        key = self._settings_key()
        need_new = mode == "init" or self.learner is None or self._key != key
        batch, budget, n_init = self.batch_size.value, self.budget.value, self.n_initial.value
        context = self._context()
        inputs: dict = {}
        if need_new:
            layer = self._structure_layer()
            derive = layer.ndim == 3  # a spectrum image: its despiked mean is the structure
            structure_meta = dict(layer.metadata)
            shape = self._plane_shape(layer)
            grid, resampled = self._resample_plan(layer, shape)
            if grid is not None:
                shape = self._plane_shape(grid)
                context = replace(context, grid=grid, resampled=resampled)
            patch = self._patch()
            if patch != "auto" and patch > min(shape):
                raise ValueError(
                    f"The patch size ({patch} px) is larger than the structure "
                    f"image {shape[0]}×{shape[1]} px; choose a patch size of at "
                    f"most {min(shape)}."
                )
            if n_init > shape[0] * shape[1]:
                raise ValueError("More initial points than pixels in the image.")
            source_layer, make_source = self._source_plan(shape)
            inputs = {"structure": layer, "measured": source_layer}
            options = dict(
                patch_size=patch,
                acquisition=self.acquisition.value,
                seed=self.seed.value,
                device=self.device_choice.value,
                maximize=self.maximize.value,
            )
            pending = None
        else:
            context = replace(context, grid=self._grid[0], resampled=self._grid[1])
            if self.learner.n_observed >= budget:  # Run/Step did nothing and said nothing
                raise ValueError(
                    f"All {budget} points of the budget are measured; raise Budget to measure "
                    "more, or press Initialize to start a new campaign."
                )
            campaign = (self.learner, self.source)
            pending = self._pending_points()

        def work(structure=None, measured=None):
            nxt = pending
            if need_new:
                yield Progress(0, budget, "Reading the layers and building the model…")
                source = make_source(measured)
                if derive:
                    structure = structure_from_spectra(spectra_last(structure, structure_meta)[0])
                if context.grid is not None:  # onto the spectrum image's pixels
                    structure = area_resample(np.asarray(structure, np.float32), shape=shape)
                learner = ActiveLearner(structure, **options)
            else:  # a copy: the widget's campaign changes only when a snapshot is on screen
                learner, source = copy.deepcopy(campaign[0]), _fork(campaign[1])

            def snapshot(points):
                return self._snapshot(learner, source, key, points, context)

            if mode != "run":  # Initialize or Step: measure, then suggest the next points
                if need_new:
                    nxt = learner.suggest(n_init)  # the initial design: no data yet
                elif learner.n_observed >= budget:
                    return snapshot(np.zeros((0, 2)))
                elif nxt is None or len(nxt) == 0:
                    nxt = learner.suggest(min(batch, budget - learner.n_observed))
                else:
                    nxt = nxt[: budget - learner.n_observed]
                learner.observe(nxt, source(nxt))
                remaining = max(budget - learner.n_observed, 0)
                nxt = learner.suggest(min(batch, remaining)) if remaining else np.zeros((0, 2))
                return snapshot(nxt)
            if nxt is not None and len(nxt) and learner.n_observed < budget:
                nxt = nxt[: budget - learner.n_observed]  # the user's (edited) next points first
                learner.observe(nxt, source(nxt))
            snap = snapshot(np.zeros((0, 2)))
            for _ in run_campaign_iter(
                None, source, budget=budget, n_initial=n_init, batch_size=batch, learner=learner
            ):
                snap = snapshot(np.zeros((0, 2)))
                yield Partial(snap, Progress(learner.n_observed, budget))  # a Stop keeps it
            return snap

        return Job(work, self._show_snapshot, inputs=inputs)

    def _context(self) -> RunContext:
        layer = self.structure_layer.value
        parameters = {
            "patch_size": self._patch(),
            "acquisition": self.acquisition.value,
            "batch_size": self.batch_size.value,
            "budget": self.budget.value,
            "maximize": self.maximize.value,
            "source": self.source_kind.value,
            "scalarizer": self.scalarizer.value,
            "window": (self.win_lo.value, self.win_hi.value),
            "window_units": self._units,
        }
        return RunContext(
            structure=layer,
            parameters=parameters,
            seed=int(self.seed.value),
            units=self._units,
            window=(float(self.win_lo.value), float(self.win_hi.value)),
            scalarizer=self.scalarizer.value,
            maximize=bool(self.maximize.value),
        )

    @staticmethod
    def _snapshot(learner, source, key, nxt, context: RunContext) -> Snapshot:
        from napari_microml.runtime.device import describe_device

        mean, std = learner.predict() if learner.n_observed else (None, None)
        spectra = getattr(source, "last_spectra", None)
        return Snapshot(
            learner=learner,
            source=source,
            key=key,
            coords=learner.coords.copy(),
            values=learner.values.copy(),
            next=np.asarray(nxt if nxt is not None else np.zeros((0, 2)), float).copy(),
            mean=mean,
            std=std,
            acquisition=(
                None if learner.last_acquisition is None else learner.last_acquisition.copy()
            ),
            best=learner.best_value,
            step=learner.step,
            spectrum=None if spectra is None else np.asarray(spectra[-1]).copy(),
            axis=getattr(source, "axis", None),
            device=describe_device(learner.model.device),
            context=context,
        )

    def cancelled_message(self) -> str:
        """A Stop keeps every completed step (the layers show them)."""
        done = "" if self.learner is None else f" ({self.learner.n_observed} measured)"
        return (
            f"Stopped: the measured points so far are kept{done}; Step or Run continues "
            "the campaign."
        )

    # --- results ---------------------------------------------------------------------------
    def show_partial(self, value) -> None:
        self._show_snapshot(value)

    def _show_snapshot(self, snap: Snapshot) -> None:
        self.learner, self.source, self._key = snap.learner, snap.source, snap.key
        ctx = snap.context
        self._grid = (ctx.grid, ctx.resampled)  # the campaign's pixel grid, for Step and Run
        phys = ctx.plane
        prov = self.provenance_metadata(
            make_provenance(
                self.tool_name,
                parameters=ctx.parameters,
                device=snap.device,
                seed=ctx.seed,
                input_name=getattr(ctx.structure, "name", None),
            )
        )
        calls: list[Callable[[], Any]] = [
            partial(self._show_map, snap, name, key, cmap, phys, prov) for name, key, cmap in MAPS
        ]
        calls += [
            partial(self._show_points, snap, phys, prov),
            partial(self._show_summary, snap),
            partial(self._update_plot, snap),
        ]
        names = [m[0] for m in MAPS] + ["measured", "next"]
        if all(name in self.viewer.layers for name in names):  # only new data: one turn
            steps = calls
            calls = [lambda: [call() for call in steps]]
        self.later(*calls)  # new layers one per event-loop turn: each costs 0.1-0.3 s

    def _show_map(self, snap, name, key, cmap, phys, prov):
        img = getattr(snap, key)
        if img is None:
            return
        img = np.asarray(img, np.float32)
        finite = np.isfinite(img)
        if not finite.any():
            return
        img = np.where(finite, img, np.min(img[finite]))
        lo, hi = float(img.min()), float(img.max())
        lim = (lo, hi if hi > lo else lo + 1e-6)
        new = name not in self.viewer.layers
        out = self.upsert(
            name,
            "image",
            img,
            colormap=cmap,
            contrast_limits=lim,
            metadata=prov,
            **phys,
        )
        if new:  # opaque over the inputs; the mean shown, the others one eye-click away
            out.visible = key == "mean"

    def _show_points(self, snap, phys, prov):
        v = self.viewer
        measured = self.upsert(
            "measured",
            "points",
            snap.coords.astype(float),
            features={"value": snap.values},
            size=2,
            metadata=prov,
            **phys,
        )
        try:
            measured.face_colormap = "viridis"
            measured.face_color = "value"
            measured.refresh_colors()
        except (ValueError, TypeError, KeyError) as err:  # cosmetic: the data are there anyway
            self._layer_problem(f"The measured points could not be coloured by value ({err}).")
        self.upsert(
            "next",
            "points",
            snap.next,
            size=3,
            face_color="red",
            border_color="white",
            metadata=prov,
            **phys,
        )
        v.layers.selection.active = v.layers["next"]

    def _show_summary(self, snap):
        self.history.append((int(snap.step), float(snap.best)))
        self.ran_on.value = str(snap.device)
        text = f"Step {snap.step}: {len(snap.values)} measured; {best_sentence(snap)}."
        structure = snap.context.structure
        if structure is not None and structure.ndim == 3:
            text += (
                f" No 2D image was chosen: the structure is the mean of {structure.name} over "
                "its spectral axis after a median despike along it."
            )
        if snap.context.resampled:
            text += f" {snap.context.resampled}"
        self._say(text)

    def _update_plot(self, snap):
        if self.figure is None:
            return
        vals, ctx = snap.values, snap.context
        best = np.maximum.accumulate(vals) if ctx.maximize else np.minimum.accumulate(vals)
        self.ax_best.clear()
        self.ax_best.plot(np.arange(1, len(best) + 1), best, "-o", ms=2)
        self.ax_best.set_xlabel("measurements", fontsize=8)
        unit = value_unit(ctx)
        what = "value" if ctx.parameters.get("source") == "scalar map" else ctx.scalarizer
        self.ax_best.set_ylabel(f"best ({unit})" if unit else "best value", fontsize=8)
        self.ax_best.set_title(f"best {what}", fontsize=8)
        self.ax_spec.clear()
        if snap.spectrum is not None:
            ax = snap.axis if snap.axis is not None else np.arange(len(snap.spectrum))
            if ctx.scalarizer == "loop area":  # the loop it measures; raw spikes faint, clipped
                loop = LoopArea().despiked(snap.spectrum[None])[0]
                self.ax_spec.plot(ax, snap.spectrum, lw=0.5, color="0.7")
                self.ax_spec.plot(ax, loop, lw=1)
                low, high = float(loop.min()), float(loop.max())
                pad = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
                self.ax_spec.set_ylim(low - pad, high + pad)
                self.ax_spec.set_title("last loop (spikes filtered)", fontsize=8)
            else:
                self.ax_spec.plot(ax, snap.spectrum, lw=1)
                self.ax_spec.axvspan(*ctx.window, alpha=0.2)
                self.ax_spec.set_title("last spectrum", fontsize=8)
            self.ax_spec.set_xlabel(ctx.units, fontsize=8)
        for a in (self.ax_best, self.ax_spec):
            a.tick_params(labelsize=7)
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
        if Path(path).exists() and not self.overwrite.value:  # the dialog never asked
            self._say(
                f"{Path(path).name} exists; tick 'Overwrite an existing file' or choose "
                "another name. Nothing was written."
            )
            return None
        out = self.learner.export_log(path)
        self._say(f"Log written to {out}.")
        return out
