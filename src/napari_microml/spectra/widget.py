"""napari dock widget for the spectral shift-VAE (a thin layer over ``fit_shift_vae_iter``).

The spectral window is chosen around the dominant peak of the mean spectrum (low-loss EELS) or
the strongest core-loss edge unless the user types one (in the axis's units); the greyed window
fields show that choice (judged on a subsample) as soon as a layer is picked; a run is refused
when neither stands out, and an implausible shift map is flagged on the status line. The
layer's data are read in the worker. A spectrum image gives shift and latent maps on its image
plane; a line scan gives a plot of the shift along the line and the tracked peak drawn over the
line-scan image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, PushButton, SpinBox

from napari_microml.runtime.provenance import KEY, make_provenance
from napari_microml.runtime.spectral import (
    SpectralAxis,
    line_positions,
    spectra_last,
    spectral_axis,
    spectral_layer,
)
from napari_microml.runtime.widget import (
    Job,
    ToolWidget,
    layer_picker,
    name_colour_bar,
    opened_from_file,
    physical_kwargs,
    pick,
    preload,
)
from napari_microml.runtime.workers import Loss, Progress, as_message
from napari_microml.spectra.preprocess import NORMALIZATIONS, signal_type_of

LOSS_PLOT_INTERVAL_S = 1.0  # each redraw takes the GIL from the fit
FEW_SPECTRA = 16  # fewer: the content latents alone can reproduce each spectrum
SHIFT_COLORMAP = "RdBu_r"  # diverging, not cyclic: −lim and +lim must not look alike


def spectral_axis_of(layer) -> tuple[np.ndarray | None, str]:
    """The spectral axis values and units of ``layer`` (``None, 'channel'`` without one)."""
    ax = spectral_axis(layer.metadata, layer.data.shape)
    return (None, "channel") if ax is None else (ax.values, ax.units)


def spatial_kwargs(layer, ax: SpectralAxis | None) -> dict:
    """``scale``/``translate``/``units``/``axis_labels`` of the layer's non-spectral axes."""
    full = physical_kwargs(layer)
    index = layer.ndim - 1 if ax is None else ax.index
    return {k: tuple(v[i] for i in range(layer.ndim) if i != index) for k, v in full.items()}


def preview_window(layer) -> tuple[tuple[float, float] | None, str, bool]:
    """The window Auto window will choose for ``layer``, from a subsample of its spectra (cheap
    enough for the GUI thread), and a sentence saying why.

    Parameters
    ----------
    layer : napari.layers.Image
        A layer with a spectral-axis record in its metadata.

    Returns
    -------
    window : (float, float) or None
        First and last axis values of the window (axis units); the whole axis when no peak or
        edge stands out, ``None`` when the spectra cannot be sampled.
    reason : str
        The sentence for the window fields' tooltip.
    found : bool
        Whether a peak or edge stands out (a run with Auto window is refused otherwise).
    """
    from napari_microml.runtime.spectral import sample_spectra
    from napari_microml.spectra.preprocess import auto_window

    try:
        spectra, ax = sample_spectra(layer.data, layer.metadata, max_spectra=1024)
    except Exception as err:  # noqa: BLE001 - a preview only; the run reads the data and says why
        return None, f"Auto window: chosen when the run starts ({err}).", True
    choice = auto_window(
        spectra, ax.values, units=ax.units, signal_type=signal_type_of(layer.metadata)
    )
    values = ax.values[choice.start : choice.stop]
    lo, hi = float(values[0]), float(values[-1])
    span = f"{lo:.4g}–{hi:.4g} {ax.units}"
    sample = f"judged on {len(spectra)} spectra; the run uses all of them"
    if not choice.found:
        said = (
            f"Auto window: no peak or edge stands out in the mean spectrum ({span}, {sample}), "
            "so a run will be refused; untick Auto window and type a window around the feature."
        )
        return (lo, hi), said, False
    return (lo, hi), f"Auto window: {span} ({choice.describe(ax.units)}; {sample}).", True


READABLE_LENGTHS = ("pm", "nm", "µm", "mm", "m")


def strip_positions(spatial: dict, axis: int, n: int) -> tuple[np.ndarray, str]:
    """Positions (n,) along the long axis ``axis`` of a one-pixel-wide spectrum image, from its
    spatial ``scale``/``translate``/``units`` (spectrum numbers when uncalibrated)."""
    units = [str(u) for u in spatial.get("units", ())]
    unit = units[axis] if axis < len(units) else "pixel"
    if unit in ("pixel", "px", ""):
        return np.arange(n, dtype=float), "spectrum"
    scale = float(spatial.get("scale", (1.0, 1.0))[axis])
    offset = float(spatial.get("translate", (0.0, 0.0))[axis])
    return offset + scale * np.arange(n), unit


def readable_length(values: np.ndarray, units: str) -> tuple[np.ndarray, str]:
    """``values`` in the length unit that writes their span with 1-3 digits before the point
    (e.g. a 0.125 µm line scan in nm); anything that is not a length is returned unchanged.

    Parameters
    ----------
    values : ndarray (n,)
        Positions in ``units``.
    units : str
        Their units (any pint length; other units pass through).

    Returns
    -------
    values : ndarray (n,)
        The positions in the chosen unit.
    units : str
        The chosen unit's symbol.
    """
    import pint

    ureg = pint.get_application_registry()
    try:
        quantity = ureg.Quantity(np.asarray(values, float), units)
        if quantity.dimensionality != ureg.meter.dimensionality:
            return values, units
    except Exception:  # noqa: BLE001 - "spectrum", "pixel" or anything pint cannot read
        return values, units
    span = float(np.ptp(quantity.to("m").magnitude)) if np.size(values) > 1 else 0.0
    if not span > 0:
        return values, units
    chosen = READABLE_LENGTHS[0]
    for unit in READABLE_LENGTHS:
        if span >= ureg.Quantity(1.0, unit).to("m").magnitude:
            chosen = unit
    return np.asarray(quantity.to(chosen).magnitude, float), chosen


def _canvas(height: float = 2.4):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2, height))  # fixed margins: tight_layout costs a stall per draw
    fig.subplots_adjust(left=0.2, right=0.96, bottom=0.26, top=0.88)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(height * 70))
    return fig, canvas


@dataclass
class Plan:
    """What one run needs besides the data (made on the GUI thread from metadata only)."""

    name: str
    axis: SpectralAxis
    spatial: dict
    line: bool
    window: tuple[int, int] | None  # channels; None = chosen automatically in the worker
    kwargs: dict
    signal_type: str = ""  # the file's ("EDS_TEM": X-ray lines, no edges)
    strip: int | None = None  # a 1×N or N×1 spectrum image: its long spatial axis (a line)

    @property
    def along_line(self) -> bool:
        """A line scan or a one-pixel-wide spectrum image: shifts are a plot, not a map."""
        return self.line or self.strip is not None


@dataclass
class Outcome:
    """A finished fit and the window it used (channels and axis values)."""

    result: Any  # ShiftVAEResult
    plan: Plan
    window: tuple[int, int]
    auto: bool
    reason: str  # why this window, e.g. "auto, around the edge at 931 eV" or "typed"
    peak: float  # the mean spectrum's maximum inside the window (axis units): the line track
    seconds: float
    caveat: str | None = None  # why the shifts' size cannot be trusted (narrow, saturated)

    @property
    def device(self) -> str:
        return self.result.device


class ShiftVAEWidget(ToolWidget):
    """Fit a shift-VAE to a spectrum image or line scan: shift map, latent maps, explorer."""

    tool_name = "shift_vae"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.layer_choice = layer_picker(
            napari.layers.Image,
            label="Spectrum image",
            options={
                "tooltip": "A spectrum image (energy as a slider) or a line scan "
                "(positions × energy) opened with its energy axis."
            },
        )
        self.auto_window = CheckBox(
            label="Auto window",
            value=True,
            tooltip="Fit only the channels around the most prominent peak of the mean "
            "spectrum (e.g. the zero-loss peak) or, in core-loss EELS, around the strongest "
            "edge (20 eV below its onset to 60 eV above); the window used is written below "
            "and in the status line. Off: use the window typed below.",
        )
        spin: dict[str, Any] = dict(min=-1e9, max=1e9, step=1.0)
        self.win_lo = FloatSpinBox(label="Window from", value=0.0, **spin)
        self.win_hi = FloatSpinBox(label="Window to", value=0.0, **spin)
        self.latent_dim = SpinBox(
            label="Content latents",
            min=1,
            max=8,
            value=2,
            tooltip="Latent variables for the peak shapes, besides the shift (dimensionless).",
        )
        self.epochs = SpinBox(
            label="Epochs (0 = auto)",
            min=0,
            max=100_000,
            value=0,
            tooltip="Passes over all spectra; auto: about 600 optimiser "
            "steps and at least 30 passes.",
        )
        self.shift_prior = FloatSpinBox(
            label="Shift prior σ",
            min=0.0,
            max=1e9,
            step=0.1,
            value=0.0,
            tooltip="Typical size of the shifts, in the axis's units; 0 = auto (5 % of the "
            "window). Make it larger for large shifts.",
        )
        self.normalize = ComboBox(
            label="Normalise",
            choices=list(NORMALIZATIONS),
            value="max",
            tooltip="max: each spectrum scaled to 0–1 (shapes only); global: one scale for all "
            "(keeps intensities); none: counts as they are.",
        )
        self.despike = CheckBox(
            label="Remove spikes",
            value=False,
            tooltip="Replace single-channel spikes (cosmic rays) by the "
            "local median before fitting.",
        )
        self.seed = SpinBox(
            label="Seed",
            min=0,
            max=2**31 - 1,
            value=0,
            tooltip="Seeds the network and the sampling: the same seed repeats a fit.",
        )
        controls = [
            self.layer_choice,
            self.auto_window,
            self.win_lo,
            self.win_hi,
            self.latent_dim,
            self.epochs,
            self.shift_prior,
            self.normalize,
            self.despike,
            self.seed,
        ]
        super().__init__(viewer, controls)
        self.save_button = PushButton(text="Save shifts…", enabled=False)
        self.save_button.tooltip = (
            "Save the last fit as CSV, one row per spectrum: its pixel, its position in nm "
            "(calibrated files), the shift ± 1 s.d. in the axis's units and the latents; "
            "the provenance goes to a .csv.json beside it. A line scan's shifts are only here "
            "and in the plot."
        )
        self.save_button.changed.connect(self._on_save_clicked)
        self.append(self.save_button)
        self.run_button.tooltip = "Fit the shift-VAE (Cancel stops it; no layer is changed)."
        self.device_choice.tooltip = "Where the network runs: auto picks a GPU when present."
        self.loss_fig, self.loss_canvas = _canvas(2.0)
        self.loss_ax = self.loss_fig.add_subplot(111)
        self.line_fig, self.line_canvas = _canvas(2.4)
        self.line_ax = self.line_fig.add_subplot(111)
        self.latent_fig, self.latent_canvas = _canvas(2.8)
        self.latent_ax = self.latent_fig.add_subplot(111)
        self.traverse_fig, self.traverse_canvas = _canvas(2.4)
        self.traverse_ax = self.traverse_fig.add_subplot(111)
        for canvas in (
            self.loss_canvas,
            self.line_canvas,
            self.latent_canvas,
            self.traverse_canvas,
        ):
            self.add_native(canvas)
        self.line_canvas.setVisible(False)
        for canvas in (self.loss_canvas, self.latent_canvas, self.traverse_canvas):
            canvas.draw()  # fonts and tick machinery loaded with the dock, not mid-run
        for canvas in (self.latent_canvas, self.traverse_canvas):
            canvas.setVisible(False)  # no empty axes until a fit is shown
        self.losses: list[float] = []
        self._loss_epochs: list[int] = []
        self.result: Any = None  # the fit on screen: the latent explorer and lasso read it
        self._saved: tuple[dict, bool] = ({}, False)  # its provenance; a line scan or not
        self.lasso = None
        self._input_name: str | None = None
        self._spatial: dict = {}
        self._line_layer: tuple | None = None
        self._points: np.ndarray | None = None
        self._units = "channel"
        self._auto_preview: tuple[float, float] | None = None  # what Auto window will choose
        self.auto_window.changed.connect(self._update_window_controls)
        self.layer_choice.changed.connect(self._on_layer)
        self._on_layer()
        viewer.layers.events.inserted.connect(self._follow_opened)
        preload(
            "torch",
            "torch.optim",
            "torch._dynamo",
            "scipy.signal",
            "scipy.optimize",
            "pandas",
            "matplotlib.widgets",
        )  # pandas: napari's Points layers
        # a path's first triangulation loads napari's numba kernels (~0.4 s): now, not mid-run
        napari.layers.Shapes([np.array([[0.0, 0.0], [1.0, 1.0]])], shape_type="path")

    # --- controls ------------------------------------------------------------------------
    def _update_window_controls(self, *_):
        for w in (self.win_lo, self.win_hi):
            w.enabled = not self.auto_window.value
        if self.auto_window.value and self._auto_preview is not None:
            self.win_lo.value, self.win_hi.value = self._auto_preview

    def _on_layer(self, *_):
        layer = self.layer_choice.value
        ax = None if layer is None else spectral_axis(layer.metadata, layer.data.shape)
        self._units = "channel" if ax is None else ax.units
        u = self._units
        how = "shows the chosen window after an auto run"
        self._auto_preview = None
        if ax is not None:
            lo, hi = float(ax.values.min()), float(ax.values.max())
            step = float(abs(ax.values[1] - ax.values[0])) if ax.values.size > 1 else 1.0
            for w in (self.win_lo, self.win_hi):
                w.min, w.max, w.step = lo, hi, step
            self._auto_preview, how, found = preview_window(layer)
            if not found and self.auto_window.value:
                self._say(how)
            if not self.auto_window.value and self.win_hi.value <= self.win_lo.value:
                self.win_lo.value, self.win_hi.value = lo, hi
        self.win_lo.label, self.win_hi.label = f"Window from ({u})", f"Window to ({u})"
        for w in (self.win_lo, self.win_hi):
            w.tooltip = f"Spectral window to fit, in {u}, used when Auto window is off. {how}"
        self.shift_prior.label = f"Shift prior σ ({u}, 0 = auto)"
        self._update_window_controls()

    def _follow_opened(self, event) -> None:
        """A spectrum image or line scan just opened from a file becomes the one to fit: Run
        otherwise re-fitted the file before it while the new one lay on top."""
        layer = opened_from_file(event)
        if not isinstance(layer, napari.layers.Image) or not spectral_layer(layer):
            return
        if not self.busy:  # the last run's sentence was about the layer before
            self._say(f"Ready: Run fits {layer.name}.")
        pick(self.layer_choice, layer)  # a window warning about it replaces 'Ready'

    # --- job -----------------------------------------------------------------------------
    def _plan(self) -> tuple:
        layer = self.layer_choice.value
        if layer is None:
            raise ValueError("Choose a spectrum-image layer first.")
        if layer.ndim not in (2, 3) or getattr(layer, "rgb", False):
            raise ValueError(
                f"Layer '{layer.name}' has {layer.ndim} dimensions; the shift-VAE needs a "
                "spectrum image (rows, cols, energy) or a line scan (positions, energy)."
            )
        ax = spectral_axis(layer.metadata, layer.data.shape)
        if ax is None and layer.ndim == 2:
            raise ValueError(
                f"Layer '{layer.name}' is a 2D image without a spectral axis in its metadata; "
                "the shift-VAE needs a spectrum image or a line scan opened with its energy "
                "axis (File → Open with napari-microml)."
            )
        if ax is None:  # a cube without metadata: channels on its last axis
            ax = cast(SpectralAxis, spectral_axis(None, layer.data.shape, required=True))
        if int(np.prod(layer.data.shape)) == int(layer.data.shape[ax.index]):
            raise ValueError(
                f"Layer '{layer.name}' holds a single spectrum; the shift-VAE learns how a "
                "feature shifts across many spectra: open a spectrum image or a line scan."
            )
        window = None
        if not self.auto_window.value:
            lo, hi = sorted((self.win_lo.value, self.win_hi.value))
            inside = np.flatnonzero((ax.values >= lo) & (ax.values <= hi))
            if inside.size < 2:
                raise ValueError(
                    f"The window {lo:g}–{hi:g} {ax.units} holds {inside.size} "
                    f"channel(s) of the axis ({ax.values.min():g}–"
                    f"{ax.values.max():g} {ax.units}); keep at least 2."
                )
            window = (int(inside[0]), int(inside[-1]) + 1)
        prior = float(self.shift_prior.value) or None
        kwargs = dict(
            axis=ax.values if ax.calibrated else None,
            latent_dim=int(self.latent_dim.value),
            epochs=int(self.epochs.value) or None,
            shift_prior=prior,
            model="shift",
            normalize=self.normalize.value,
            despike=bool(self.despike.value),
            seed=int(self.seed.value),
            device=self.device_choice.value,
        )
        spatial = [n for i, n in enumerate(layer.data.shape) if i != ax.index]
        strip = None
        if len(spatial) == 2 and min(spatial) == 1:  # a map one pixel wide would be a hairline
            strip = int(np.argmax(spatial))
        plan = Plan(
            layer.name,
            ax,
            spatial_kwargs(layer, ax),
            layer.ndim == 2,
            window,
            kwargs,
            signal_type_of(layer.metadata),
            strip,
        )
        return layer, plan

    def make_job(self):
        from napari_microml.spectra.preprocess import auto_window, size_caveats
        from napari_microml.spectra.shift_vae import check_spectra, fit_shift_vae_iter

        layer, plan = self._plan()
        meta = layer.metadata
        self.losses, self._loss_epochs = [], []
        self._draw_loss()

        def work(data):
            start = time.perf_counter()
            cube, _ = spectra_last(data, meta)
            spectra = np.asarray(cube, dtype=np.float32)
            if plan.line:
                spectra = spectra[:, None, :]  # (N, L) -> (N, 1, L): maps are (N, 1)
            u = plan.axis.units
            auto = plan.window is None
            window, how = plan.window, "typed"
            if window is None:
                choice = auto_window(
                    spectra, plan.axis.values, units=u, signal_type=plan.signal_type
                )
                if not choice.found:
                    v = plan.axis.values
                    raise ValueError(
                        f"No peak or edge stands out in the mean spectrum ({v.min():.4g}–"
                        f"{v.max():.4g} {u}), so there is no feature whose shift could be "
                        "measured. Untick Auto window and type a window around the feature to "
                        "follow (for an edge: from 20 eV below its onset to 60 eV above)."
                    )
                window, how = (choice.start, choice.stop), choice.describe(u)
            values = plan.axis.values[window[0] : window[1]]
            peak = float(
                values[
                    np.argmax(
                        spectra.reshape(-1, spectra.shape[-1])[:, window[0] : window[1]].mean(0)
                    )
                ]
            )
            head = f"Window {values[0]:.4g}–{values[-1]:.4g} {u} ({how})"
            yield Progress(0, 1, f"{head}; fitting…")
            check_spectra(spectra, plan.kwargs["axis"], window)
            fit = fit_shift_vae_iter(spectra, channel_range=window, **plan.kwargs)
            last = 0.0
            while True:
                try:
                    message = next(fit)
                except StopIteration as stop:
                    result = stop.value
                    break
                loss = as_message(message)
                now = time.perf_counter()
                if isinstance(loss, Loss) and (
                    now - last >= LOSS_PLOT_INTERVAL_S or loss.step >= loss.total
                ):
                    last = now
                    yield replace(loss, text=f"{head}; {loss.text}")
            caveat = size_caveats(spectra[..., window[0] : window[1]])
            seconds = time.perf_counter() - start
            return Outcome(result, plan, window, auto, how, peak, seconds, caveat)

        return Job(work, self._show_outcome, inputs={"data": layer})

    def show_loss(self, loss: Loss) -> None:
        value = loss.values.get("loss")
        if value is not None:
            self.losses.append(float(value))
            self._loss_epochs.append(int(loss.step))
            self._draw_loss()

    def _draw_loss(self):
        ax = self.loss_ax
        ax.clear()
        if self.losses:
            ax.plot(
                self._loss_epochs,
                self.losses,
                "-",
                lw=1,
            )
            if min(self.losses) > 0:
                from matplotlib.ticker import NullFormatter

                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss (nats / spectrum)", fontsize=8)
        ax.tick_params(labelsize=7)
        self.loss_canvas.draw_idle()

    # --- results -------------------------------------------------------------------------
    def _show_outcome(self, outcome: Outcome) -> None:
        plan, result = outcome.plan, outcome.result
        self.result = result
        self._input_name = plan.name
        self._spatial = plan.spatial
        layer = self.viewer.layers[plan.name] if plan.name in self.viewer.layers else None
        self._line_layer = (
            (layer.data.shape, physical_kwargs(layer)) if plan.line and layer is not None else None
        )
        units = plan.axis.units
        w0, w1 = outcome.window
        lo, hi = float(result.axis[0]), float(result.axis[-1])
        self.win_lo.value, self.win_hi.value = lo, hi
        params = {k: v for k, v in plan.kwargs.items() if k != "axis"}
        params.update(
            spectral_units=units,
            shift_offset=result.shift_offset,
            shift_reference="median",
            channel_range=[w0, w1],
            window=[lo, hi],
            window_auto=outcome.auto,
            window_reason=outcome.reason,
        )
        record = make_provenance(
            "shift_vae",
            parameters=params,
            device=result.device,
            seed=plan.kwargs["seed"],
            input_name=plan.name,
        )
        calls: list[Callable[[], Any]]
        if plan.line:
            calls = [partial(self._show_line, outcome, record)]
        elif plan.strip is not None:
            calls = []  # one pixel wide: the plot below the controls shows the shifts
        else:
            calls = [partial(self._show_maps, outcome, record)]
            calls += [
                partial(self._show_latent, outcome, record, i)
                for i in range(result.latents.shape[-1])
            ]

        def plots():  # cheap to set up; they paint together on the next turn
            if plan.along_line:
                self._draw_line(outcome)
            else:
                self.line_canvas.setVisible(False)  # a plot of the line fitted before
            if not plan.line:
                self._drop_stale(outcome)
            self._draw_latents()
            self._draw_traversal(units)
            self._say(self._summary(outcome))

        self._saved = (record, plan.line)  # what Save shifts… writes beside the table
        self.save_button.enabled = True
        self.later(*calls, plots)  # a new layer per event-loop turn (0.1-0.3 s each)

    def _summary(self, outcome) -> str:
        from napari_microml.spectra.preprocess import implausible_shift

        r, u = outcome.result, outcome.plan.axis.units
        span = float(np.nanmax(r.shift) - np.nanmin(r.shift))
        text = (
            f"Done in {outcome.seconds:.1f} s. Window {r.axis[0]:.4g}–{r.axis[-1]:.4g} {u} "
            f"({outcome.reason}); shifts span {span:.3g} {u}"
        )
        if not outcome.plan.along_line:  # the map's colour bar runs over ± the largest shift
            text += f" (colour bar ±{float(np.nanmax(np.abs(r.shift))):.3g} {u})"
        warning = implausible_shift(
            r.shift,
            window=(float(r.axis[0]), float(r.axis[-1])),
            units=u,
            signal_type=outcome.plan.signal_type,
        )
        few = ""
        if r.shift.size < FEW_SPECTRA:
            few = (
                f"Only {r.shift.size} spectra: too few for the network to tell a shift from a "
                "change of the peak's shape, so read the shifts as a rough guide and check them "
                "against the spectra."
            )
        return " ".join(w for w in (f"{text}.", warning, outcome.caveat, few) if w)

    def _shift_record(self, record, units):
        return {KEY: {**record, "value": "shift", "value_units": units}}

    def _show_maps(self, outcome, record):
        r, plan = outcome.result, outcome.plan
        lim = float(np.nanmax(np.abs(r.shift))) or 1.0
        layer = self.upsert(
            f"{plan.name} shift",
            "image",
            r.shift,
            colormap=SHIFT_COLORMAP,
            contrast_limits=(-lim, lim),
            metadata=self._shift_record(record, plan.axis.units),
            **plan.spatial,
        )
        colorbar = getattr(layer, "colorbar", None)  # napari without layer colour bars: none
        if colorbar is not None:
            colorbar.visible = True
            u = plan.axis.units
            name_colour_bar(self.viewer, f"shift ({u}), ±{lim:.3g} {u}")

    def _show_latent(self, outcome, record, i):
        r, plan = outcome.result, outcome.plan
        lat = r.latents[..., i]
        lo, hi = float(lat.min()), float(lat.max())
        layer = self.upsert(
            f"{plan.name} latent {i + 1}",
            "image",
            lat,
            colormap="viridis",
            contrast_limits=(lo, hi if hi > lo else lo + 1),
            metadata={KEY: {**record, "value": f"latent {i + 1}", "value_units": ""}},
            **plan.spatial,
        )
        layer.visible = False  # the shift map stays on top; latents one eye-click away

    def _drop_stale(self, outcome):
        """Remove latent maps left over from an earlier run with more latents."""
        name = outcome.plan.name
        i = outcome.result.latents.shape[-1] + 1
        while f"{name} latent {i}" in self.viewer.layers:
            stale = self.viewer.layers[f"{name} latent {i}"]
            if stale.metadata.get(KEY, {}).get("tool") == "shift_vae":
                self.viewer.layers.remove(stale)
            i += 1

    def _show_line(self, outcome, record):
        """The tracked peak (peak of the mean spectrum + shift) over the line-scan image."""
        r, plan = outcome.result, outcome.plan
        layer = self.viewer.layers[plan.name] if plan.name in self.viewer.layers else None
        ax = plan.axis.values
        step = float(ax[1] - ax[0]) if ax.size > 1 else 1.0
        peak = outcome.peak + r.shift.ravel()
        rows = np.arange(peak.size, dtype=float)
        path = np.column_stack([rows, (peak - ax[0]) / step])  # layer data coords (row, channel)
        kw = physical_kwargs(layer) if layer is not None else {}
        width = max(2.0, ax.size / 300)  # channels: thin enough to leave the peak visible
        self.upsert(
            f"{plan.name} shift track",
            "shapes",
            [path],
            shape_type="path",
            edge_color="cyan",
            edge_width=width,
            opacity=0.8,
            metadata=self._shift_record(record, plan.axis.units),
            **kw,
        )

    def _draw_line(self, outcome):
        r, plan = outcome.result, outcome.plan
        if plan.strip is None:
            along = line_positions(self._layer_metadata(plan.name), r.shift.size)
        else:
            along = strip_positions(plan.spatial, plan.strip, r.shift.size)
        pos, pos_units = readable_length(*along)
        ax = self.line_ax
        ax.clear()
        shift = r.shift.ravel()
        ax.plot(pos, shift, "-o", ms=2, lw=1, label="shift")
        if r.shift_std is not None:
            sd = r.shift_std.ravel()
            ax.fill_between(pos, shift - sd, shift + sd, alpha=0.25)
        ax.set_xlabel(f"position ({pos_units})", fontsize=8)
        ax.set_ylabel(f"shift ({plan.axis.units})", fontsize=8)
        what = "line scan" if plan.line else "line of spectra"
        ax.set_title(f"shift along the {what} (± 1 s.d.)", fontsize=8)
        ax.tick_params(labelsize=7)
        self.line_canvas.setVisible(True)
        self.line_canvas.draw_idle()

    def _on_save_clicked(self, *_):
        from qtpy.QtWidgets import QFileDialog

        if self.result is None:
            self._say("Nothing to save yet: run a fit first.")
            return
        name = self._input_name or "spectra"
        path, _ = QFileDialog.getSaveFileName(  # Qt's dialog asks before replacing a file
            self.native, "Save shifts", f"{name} shifts.csv", "CSV (*.csv)"
        )
        if path:
            self.save_shifts(path if path.lower().endswith(".csv") else path + ".csv")

    def save_shifts(self, path: str) -> None:
        """Write the fit on screen to ``path`` (CSV, one row per spectrum: ``shift_table``)
        and its provenance to ``path + '.json'``; the status says where."""
        import json

        from napari_microml.io.writer import staged
        from napari_microml.spectra.table import shift_table

        r, (record, line_scan) = self.result, self._saved
        if line_scan:  # the layer's own axes are a display layout: the line's are in metadata
            line = (self._layer_metadata(self._input_name).get(KEY) or {}).get("line_axis") or {}
            axes = [(line.get("scale", 1.0), line.get("offset", 0.0), line.get("units", "pixel"))]
            shift = r.shift.reshape(-1)
            sd = None if r.shift_std is None else r.shift_std.reshape(-1)
        else:
            sp = self._spatial
            n = r.shift.ndim
            axes = list(
                zip(
                    sp.get("scale", (1.0,) * n),
                    sp.get("translate", (0.0,) * n),
                    [str(u) for u in sp.get("units", ("pixel",) * n)],
                    strict=True,
                )
            )
            shift, sd = r.shift, r.shift_std
        units = (record.get("parameters") or {}).get("spectral_units")
        table = shift_table(
            shift,
            r.latents.reshape(shift.size, -1),
            axes=axes,
            shift_units=None if units in (None, "channel") else units,
            shift_std=sd,
        )
        with staged(path) as tmp:  # no half-written file if the disk fills
            table.to_csv(tmp, index=False)
        with staged(path + ".json") as tmp:
            Path(tmp).write_text(json.dumps({KEY: record}, indent=1, default=str))
        where = " and their positions in nm" if any(c.endswith("_nm") for c in table) else ""
        self._say(
            f"Saved {len(table)} spectra's shifts ({units or 'channels'}){where} to {path} "
            f"(provenance in {Path(path).name}.json)."
        )

    def _layer_metadata(self, name):
        return self.viewer.layers[name].metadata if name in self.viewer.layers else {}

    def _draw_latents(self):
        from matplotlib.widgets import LassoSelector

        r = self.result
        lat = r.latents.reshape(-1, r.latents.shape[-1])
        if lat.shape[1] >= 2:
            pts, labels = lat[:, :2], ("latent 1", "latent 2")
        else:
            pts, labels = np.column_stack([lat[:, 0], r.shift.ravel()]), ("latent 1", "shift")
        self._points = pts
        ax = self.latent_ax
        ax.clear()
        ax.scatter(pts[:, 0], pts[:, 1], s=3, c=r.shift.ravel(), cmap=SHIFT_COLORMAP)
        ax.set_xlabel(labels[0], fontsize=8)
        ax.set_ylabel(labels[1], fontsize=8)
        ax.set_title("lasso to select pixels (colour = shift)", fontsize=8)
        ax.tick_params(labelsize=7)
        self.lasso = LassoSelector(ax, onselect=self.on_lasso_select)
        self.latent_canvas.setVisible(True)
        self.latent_canvas.draw_idle()

    def on_lasso_select(self, vertices) -> None:
        """Mark the pixels whose latents fall inside the lasso ``vertices`` (latent coords)."""
        from matplotlib.path import Path

        if self.result is None or self._points is None or len(vertices) < 3:
            return
        inside = Path(np.asarray(vertices, float)).contains_points(self._points)
        mask = inside.reshape(self.result.latents.shape[:-1]).astype(np.int32)
        record = make_provenance(
            "shift_vae.latent_selection",
            parameters={"vertices": np.asarray(vertices, float).round(6).tolist()},
            input_name=self._input_name,
        )
        kwargs = self._spatial
        if self._line_layer is not None:  # line scan: mark whole spectra
            shape, kwargs = self._line_layer
            mask = np.broadcast_to(mask.reshape(-1, 1), shape).copy()
        self.upsert(
            f"{self._input_name} latent selection",
            "labels",
            mask,
            metadata={KEY: record},
            **kwargs,
        )
        self._say(f"Selected {int(mask.sum())} pixels in latent space.")

    def _draw_traversal(self, units: str):
        r = self.result
        values, spectra = r.traverse(0, n=7)
        ax = self.traverse_ax
        ax.clear()
        import matplotlib.cm as cm

        colors = cm.viridis(np.linspace(0, 1, len(values)))
        for v, s, c in zip(values, spectra, colors, strict=True):
            ax.plot(r.axis, s, color=c, lw=1, label=f"{v:.2f}")
        ax.set_xlabel(units or "channel", fontsize=8)
        ax.set_title("decoded along latent 1", fontsize=8)
        ax.tick_params(labelsize=7)
        self.traverse_canvas.setVisible(True)
        self.traverse_canvas.draw_idle()
