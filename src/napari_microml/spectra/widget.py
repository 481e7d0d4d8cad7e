"""napari dock widget for the spectral shift-VAE (a thin layer over ``fit_shift_vae_iter``)."""
from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox, create_widget

from napari_microml.runtime.provenance import KEY, make_provenance
from napari_microml.runtime.widget import ToolWidget, physical_kwargs, upsert_layer
from napari_microml.spectra.preprocess import NORMALIZATIONS


def spectral_axis_of(layer) -> tuple[np.ndarray | None, str]:
    """The spectral axis (last layer axis) values and units from the layer's metadata.

    Reads ``layer.metadata['napari_microml']['spectral_axis'] = {'scale', 'offset', 'units'}``;
    without it the axis is channel numbers (``None``, ``'channel'``).
    """
    meta = (layer.metadata or {}).get(KEY, {}) or {}
    spec = meta.get("spectral_axis") if isinstance(meta, dict) else None
    n = layer.data.shape[-1]
    if not spec:
        return None, "channel"
    scale = float(spec.get("scale", 1.0))
    offset = float(spec.get("offset", 0.0))
    return offset + scale * np.arange(n), str(spec.get("units", "") or "")


def meta_has_axis(layer) -> bool:
    """True when the layer's metadata names a spectral axis."""
    meta = (layer.metadata or {}).get(KEY, {}) or {}
    return isinstance(meta, dict) and bool(meta.get("spectral_axis"))


def spatial_kwargs(layer) -> dict:
    """``scale``/``translate``/``units``/``axis_labels`` of the spatial axes (all but the last).

    A line scan (N, L) gives results shaped (N, 1): the row axis keeps the layer's calibration
    and the added column axis gets the same scale and units (so pixels stay square).
    """
    full = physical_kwargs(layer)
    if layer.ndim == 2:
        first = {k: tuple(v)[0] for k, v in full.items()}
        out = {"scale": (first["scale"], first["scale"]), "translate": (first["translate"], 0.0)}
        if "units" in first:
            out["units"] = (first["units"], first["units"])
        if "axis_labels" in first:
            out["axis_labels"] = (first["axis_labels"], f"{first['axis_labels']}_")
        return out
    return {k: tuple(v)[:2] for k, v in full.items()}


def _canvas(height: float = 2.4):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2, height), tight_layout=True)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(height * 70))
    return fig, canvas


class ShiftVAEWidget(ToolWidget):
    """Fit a shift-VAE to a spectrum image (H, W, L): shift map, latent maps, latent explorer."""

    tool_name = "shift_vae"

    def __init__(self, viewer):
        import napari

        self.layer_choice = create_widget(annotation=napari.layers.Image, label="Spectrum image")
        self.channel_start = SpinBox(label="First channel", min=0, max=1_000_000, value=0)
        self.channel_stop = SpinBox(label="Stop channel (0 = all)", min=0, max=1_000_000, value=0)
        self.latent_dim = SpinBox(label="Content latents", min=1, max=8, value=2)
        self.epochs = SpinBox(label="Epochs (0 = auto)", min=0, max=100_000, value=0)
        self.shift_prior = FloatSpinBox(label="Shift prior σ (axis units, 0 = auto)", min=0.0,
                                        max=1e9, step=0.1, value=0.0)
        self.normalize = ComboBox(label="Normalise", choices=list(NORMALIZATIONS), value="max")
        self.despike = CheckBox(label="Remove spikes", value=False)
        self.seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=0)
        controls = [self.layer_choice, self.channel_start, self.channel_stop, self.latent_dim,
                    self.epochs, self.shift_prior, self.normalize, self.despike, self.seed]
        super().__init__(viewer, controls)
        self.loss_fig, self.loss_canvas = _canvas(2.0)
        self.loss_ax = self.loss_fig.add_subplot(111)
        self.latent_fig, self.latent_canvas = _canvas(2.8)
        self.latent_ax = self.latent_fig.add_subplot(111)
        self.traverse_fig, self.traverse_canvas = _canvas(2.4)
        self.traverse_ax = self.traverse_fig.add_subplot(111)
        for canvas in (self.loss_canvas, self.latent_canvas, self.traverse_canvas):
            self.native.layout().addWidget(canvas)
        self.losses: list[float] = []
        self.result = None
        self.lasso = None
        self._input_name = None
        self._spatial = {}
        self._points = None

    # --- job -----------------------------------------------------------------------------
    def _inputs(self):
        layer = self.layer_choice.value
        if layer is None:
            raise ValueError("Choose a spectrum-image layer (rows, cols, channels) first.")
        if layer.ndim not in (2, 3) or getattr(layer, "rgb", False):
            raise ValueError(
                f"Layer '{layer.name}' has {layer.ndim} dimensions; the shift-VAE needs a spectrum "
                "image (rows, cols, channels) or a line scan (positions, channels) with the "
                "spectral axis last."
            )
        data = np.asarray(layer.data, dtype=np.float32)
        if data.ndim == 2:
            if not meta_has_axis(layer):
                raise ValueError(
                    f"Layer '{layer.name}' is a 2D image without a spectral axis in its metadata; "
                    "the shift-VAE needs a spectrum image (rows, cols, channels) or a line scan "
                    "(positions, channels) opened with its energy axis."
                )
            data = data[:, None, :]  # line scan (N, L) -> (N, 1, L)
        axis, units = spectral_axis_of(layer)
        stop = int(self.channel_stop.value) or data.shape[-1]
        channel_range = None
        if int(self.channel_start.value) > 0 or stop < data.shape[-1]:
            channel_range = (int(self.channel_start.value), stop)
        prior = float(self.shift_prior.value) or None
        kwargs = dict(axis=axis, latent_dim=int(self.latent_dim.value),
                      epochs=int(self.epochs.value) or None,
                      shift_prior=prior, model="shift", normalize=self.normalize.value,
                      channel_range=channel_range, despike=bool(self.despike.value),
                      seed=int(self.seed.value), device=self.device_choice.value)
        return layer, data, units, kwargs

    def make_job(self):
        from napari_microml.spectra.shift_vae import _validate, fit_shift_vae_iter

        layer, data, units, kwargs = self._inputs()
        _validate(data, kwargs["axis"], kwargs["channel_range"])  # clear errors before starting
        self._pending = (layer.name, spatial_kwargs(layer), units, kwargs)
        self.losses = []
        self._draw_loss()

        def job():
            result = yield from fit_shift_vae_iter(data, **kwargs)
            return result

        return job

    def _on_yield(self, message):
        super()._on_yield(message)
        if isinstance(message, tuple) and len(message) > 4 and isinstance(message[4], dict):
            self.losses.append(float(message[4]["loss"]))
            self._draw_loss()

    def _draw_loss(self):
        ax = self.loss_ax
        ax.clear()
        if self.losses:
            ax.plot(np.arange(1, len(self.losses) + 1), self.losses, "-", lw=1)
            if min(self.losses) > 0:
                ax.set_yscale("log")
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        self.loss_canvas.draw_idle()

    # --- results -------------------------------------------------------------------------
    def show_result(self, result) -> None:
        name, spatial, units, kwargs = self._pending
        self.result = result
        self._input_name = name
        self._spatial = spatial
        params = {k: v for k, v in kwargs.items() if k != "axis"}
        params.update(spectral_units=units, shift_offset=result.shift_offset,
                      shift_reference="median")
        record = make_provenance("shift_vae", parameters=params, device=result.device,
                                 seed=kwargs["seed"], input_name=name)
        shift_record = {**record, "value": "shift", "value_units": units}
        lim = float(np.nanmax(np.abs(result.shift))) or 1.0
        upsert_layer(self.viewer, f"{name} shift", "image", result.shift,
                     colormap="twilight_shifted", contrast_limits=(-lim, lim),
                     metadata={KEY: shift_record}, **spatial)
        for i in range(result.latents.shape[-1]):
            lat = result.latents[..., i]
            lo, hi = float(lat.min()), float(lat.max())
            upsert_layer(self.viewer, f"{name} latent {i + 1}", "image", lat, colormap="viridis",
                         contrast_limits=(lo, hi if hi > lo else lo + 1),
                         metadata={KEY: {**record, "value": f"latent {i + 1}", "value_units": ""}},
                         **spatial)
        # drop latent maps left over from an earlier run with more latents
        i = result.latents.shape[-1] + 1
        while f"{name} latent {i}" in self.viewer.layers:
            stale = self.viewer.layers[f"{name} latent {i}"]
            if stale.metadata.get(KEY, {}).get("tool") == "shift_vae":
                self.viewer.layers.remove(stale)
            i += 1
        self._draw_latents()
        self._draw_traversal(units)

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
        ax.scatter(pts[:, 0], pts[:, 1], s=3, c=r.shift.ravel(), cmap="twilight_shifted")
        ax.set_xlabel(labels[0], fontsize=8)
        ax.set_ylabel(labels[1], fontsize=8)
        ax.set_title("lasso to select pixels (colour = shift)", fontsize=8)
        ax.tick_params(labelsize=7)
        self.lasso = LassoSelector(ax, onselect=self.on_lasso_select)
        self.latent_canvas.draw_idle()

    def on_lasso_select(self, vertices) -> None:
        """Mark the pixels whose latents fall inside the lasso ``vertices`` (latent coords)."""
        from matplotlib.path import Path

        if self.result is None or self._points is None or len(vertices) < 3:
            return
        inside = Path(np.asarray(vertices, float)).contains_points(self._points)
        mask = inside.reshape(self.result.latents.shape[:-1]).astype(np.int32)
        record = make_provenance("shift_vae.latent_selection", parameters={
            "vertices": np.asarray(vertices, float).round(6).tolist()}, input_name=self._input_name)
        upsert_layer(self.viewer, f"{self._input_name} latent selection", "labels", mask,
                     metadata={KEY: record}, **self._spatial)
        self._say(f"Selected {int(mask.sum())} pixels in latent space.")

    def _draw_traversal(self, units: str):
        r = self.result
        values, spectra = r.traverse(0, n=7)
        ax = self.traverse_ax
        ax.clear()
        import matplotlib.cm as cm

        colors = cm.viridis(np.linspace(0, 1, len(values)))
        for v, s, c in zip(values, spectra, colors):
            ax.plot(r.axis, s, color=c, lw=1, label=f"{v:.2f}")
        ax.set_xlabel(units or "channel", fontsize=8)
        ax.set_title("decoded along latent 1", fontsize=8)
        ax.tick_params(labelsize=7)
        self.traverse_canvas.draw_idle()
