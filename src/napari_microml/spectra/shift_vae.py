"""Shift-VAE: a translation-invariant variational autoencoder for spectra.

After Ziatdinov et al. (2023) and pyroVED's ``iVAE(invariances=["shift"])``, written in plain
torch. An MLP encoder maps a spectrum to a *shift* latent ``s`` and ``latent_dim`` *content*
latents ``z``. The decoder is a coordinate ("spatial") decoder: an MLP evaluated at every
channel on ``(x - s, z)``, where ``x`` is the spectral axis mapped linearly onto [-1, 1].
Because the decoder only ever sees ``x - s``, moving ``s`` moves the whole decoded spectrum
rigidly along the axis, so peak positions go into ``s`` and shapes (widths, ratios) go into
``z``. Likelihood is Gaussian with a fixed noise scale; the KL term is warmed up.

Conventions
-----------
* A **positive shift** means the spectrum's features sit at **larger axis values**.
* Shifts are returned **in axis units** (channels when ``axis`` is None). A shift of the
  decoder by ``s`` (in [-1, 1] units) is exactly ``s × (axis[-1] - axis[0]) / 2`` axis units.
* The decoder's template position is arbitrary (a constant offset can move between the
  template and ``s``), so the returned shift is **relative to its median** over the data set:
  zero means "where the typical spectrum is". The subtracted value is ``result.shift_offset``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_microml.runtime.validate import check_number, finite_range
from napari_microml.runtime.workers import drain, progress
from napari_microml.spectra.preprocess import NORMALIZATIONS
from napari_microml.spectra.preprocess import despike as _despike
from napari_microml.spectra.preprocess import normalize as _normalize

MODELS = ("shift", "plain")


@dataclass
class ShiftVAEResult:
    """What :func:`fit_shift_vae` found.

    Attributes
    ----------
    shift : ndarray float32, (N,) or (H, W)
        Posterior-mean shift in axis units, relative to its median; ``None`` for the plain VAE.
    shift_std : ndarray float32 like ``shift``
        Posterior standard deviation of the shift (axis units); ``None`` for the plain VAE.
    latents : ndarray float32, (N, latent_dim) or (H, W, latent_dim)
        Posterior means of the content latents.
    latents_std : ndarray float32 like ``latents``
    reconstruction : ndarray float32 (float64 for float64 input), (N, L') or (H, W, L')
        Decoded spectra over the channels used (``channel_range``), in input intensity units.
    axis : ndarray float64 (L',)
        Axis values of the channels used.
    loss_history : list of float
        Mean loss per spectrum (negative ELBO, nats) at every epoch.
    device, params, model, shift_offset, fit_seconds
    provenance : dict
        Tool, version, parameters, device and seed (as every tool's result).
    """

    shift: np.ndarray | None
    shift_std: np.ndarray | None
    latents: np.ndarray
    latents_std: np.ndarray
    reconstruction: np.ndarray
    axis: np.ndarray
    loss_history: list
    device: str
    params: dict
    model: str = "shift"
    shift_offset: float = 0.0
    fit_seconds: float = 0.0
    _net: Any = field(default=None, repr=False)
    _half_span: float = field(default=1.0, repr=False)

    @property
    def provenance(self) -> dict:
        """Tool, package version, parameters (channels used, seed, …) and device of this fit.

        The same shape every tool's result records.
        """
        from napari_microml.runtime.provenance import make_provenance

        return make_provenance(
            "spectra.shift_vae",
            parameters={**self.params, "model": self.model},
            device=self.device,
            seed=self.params.get("seed"),
        )

    def decode(self, latents, shift=0.0) -> np.ndarray:
        """Decode content latents (M, latent_dim) at ``shift`` into normalised spectra (M, L').

        ``shift`` is in axis units, relative to the median like ``self.shift``.
        """
        import torch

        z = torch.as_tensor(np.atleast_2d(np.asarray(latents, np.float32)))
        net = self._net
        with torch.no_grad():
            if self.model == "shift":
                s = (
                    np.broadcast_to(np.asarray(shift, np.float32), (z.shape[0],))
                    + self.shift_offset
                ) / self._half_span
                out = net.decode(torch.as_tensor(np.asarray(s, np.float32))[:, None], z)
            else:
                out = net.decode(None, z)
        return out.numpy()

    def traverse(self, index: int = 0, n: int = 7, span: float = 2.0):
        """Decode spectra along content latent ``index`` (others at 0, shift at the median).

        Returns ``(values (n,), spectra (n, L'))``; ``values`` run over ±``span`` posterior
        standard deviations of that latent around its mean.
        """
        lat = self.latents.reshape(-1, self.latents.shape[-1])
        mu, sd = lat[:, index].mean(), lat[:, index].std() + 1e-6
        values = np.linspace(mu - span * sd, mu + span * sd, n).astype(np.float32)
        z = np.tile(np.median(lat, axis=0), (n, 1)).astype(np.float32)
        z[:, index] = values
        return values, self.decode(z, 0.0)


def _init_weights(net, generator) -> None:
    """Initialise ``net``'s Linear layers as torch does by default, from ``generator``.

    torch's global generator is shared by every thread: two fits at once (``microml spectra``
    on two files) drew from it in turns, so one seed gave different shifts.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.weight.shape[1]) if m.weight.shape[1] else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def _build_net(L: int, latent_dim: int, model: str, hidden: int, coord):
    import torch
    from torch import nn

    n_shift = 1 if model == "shift" else 0

    class Net(nn.Module):
        coord: torch.Tensor  # buffers (register_buffer)
        freqs: torch.Tensor

        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Linear(L, 2 * hidden),
                nn.Tanh(),
                nn.Linear(2 * hidden, hidden),
                nn.Tanh(),
                nn.Linear(hidden, 2 * (latent_dim + n_shift)),
            )
            self.register_buffer("coord", torch.as_tensor(coord, dtype=torch.float32))
            if model == "shift":
                # Fourier features of (x - s) sharpen narrow peaks and keep translation
                # equivariance (they depend on x - s only)
                self.register_buffer(
                    "freqs", torch.tensor([1.0, 2.0, 4.0], dtype=torch.float32) * math.pi
                )
                d_in = 1 + 2 * len(self.freqs) + latent_dim
                self.decoder = nn.Sequential(
                    nn.Linear(d_in, hidden),
                    nn.Tanh(),
                    nn.Linear(hidden, hidden),
                    nn.Tanh(),
                    nn.Linear(hidden, 1),
                )
            else:
                self.decoder = nn.Sequential(
                    nn.Linear(latent_dim, hidden),
                    nn.Tanh(),
                    nn.Linear(hidden, 2 * hidden),
                    nn.Tanh(),
                    nn.Linear(2 * hidden, L),
                )

        def encode(self, x):
            out = self.encoder(x)
            mu, logvar = out.chunk(2, dim=-1)
            return mu, logvar.clamp(-12, 6)

        def decode(self, s, z):
            if model == "plain":
                return self.decoder(z)
            B, L_ = z.shape[0], self.coord.shape[0]
            u = self.coord[None, :] - s  # (B, L): x - s
            feats = [u[..., None]]
            ang = u[..., None] * self.freqs
            feats += [torch.sin(ang), torch.cos(ang)]
            feats.append(z[:, None, :].expand(B, L_, z.shape[1]))
            return self.decoder(torch.cat(feats, dim=-1)).squeeze(-1)

    return Net()


def check_spectra(spectra, axis=None, channel_range=None):
    """Check spectra for fitting and return them flattened, with their axis.

    Parameters
    ----------
    spectra : array (N, L) or (H, W, L)
        Spectra with the spectral axis last.
    axis : array (L,), optional
        Spectral axis values (finite, strictly monotonic); channels 0..L-1 when None.
    channel_range : (start, stop), optional
        Channel indices (half-open) to keep; at least 2 channels.

    Returns
    -------
    X : (N, L') float64
        The spectra, one per row, over the kept channels.
    axis : (L',) float64
        Axis values of the kept channels.
    spatial : tuple
        The input's shape without the spectral axis ((N,) or (H, W)).

    Raises
    ------
    ValueError
        Not numbers, wrong dimensionality, fewer than 2 channels or spectra, NaN/inf spectra,
        or an axis of the wrong length or order.
    """
    arr = np.asarray(spectra)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"The spectra must contain numbers, not {arr.dtype} values.")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"The spectra have {arr.ndim} dimensions {arr.shape}; expected a stack of spectra "
            "(N, channels) or a spectrum image (rows, cols, channels) with the spectral axis last."
        )
    spatial = arr.shape[:-1]
    L = arr.shape[-1]
    X = arr.reshape(-1, L).astype(np.float64)  # float64 until the units are divided out
    if L < 2:
        raise ValueError(
            f"The spectra have only {L} channel; a shift needs at least 2 channels "
            "(is the spectral axis the last one?)."
        )
    if X.shape[0] < 2:
        raise ValueError(f"Only {X.shape[0]} spectrum was given; the VAE needs at least 2.")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {X.shape[0]} spectra contain NaN or infinite values; "
            "remove or fill them before fitting."
        )
    if axis is None:
        ax = np.arange(L, dtype=float)
    else:
        ax = np.asarray(axis, dtype=float).ravel()
        if ax.shape[0] != L:
            raise ValueError(
                f"The spectral axis has {ax.shape[0]} values but the spectra have {L} channels; "
                "they must match."
            )
        d = np.diff(ax)
        if not (np.all(d > 0) or np.all(d < 0)) or not np.isfinite(ax).all():
            raise ValueError(
                "The spectral axis must be finite and strictly increasing or decreasing."
            )
    if channel_range is not None:
        lo, hi = (int(v) for v in channel_range)
        lo, hi = max(lo, 0), min(hi, L)
        if hi - lo < 2:
            raise ValueError(
                f"The channel range {tuple(channel_range)} keeps {max(hi - lo, 0)} channels "
                f"of {L}; keep at least 2."
            )
        X, ax = X[:, lo:hi], ax[lo:hi]
    return X, ax, spatial


def fit_shift_vae_iter(
    spectra,
    *,
    axis=None,
    latent_dim: int = 2,
    epochs: int | None = None,
    shift_prior: float | None = None,
    model: str = "shift",
    normalize: str = "max",
    channel_range=None,
    despike: bool = False,
    seed: int = 0,
    device="auto",
    batch_size: int | None = None,
    learning_rate: float = 2e-3,
    noise_scale: float = 0.05,
    warmup: float = 0.3,
    hidden: int = 64,
) -> Generator[tuple, None, ShiftVAEResult]:
    """Fit like :func:`fit_shift_vae`, as a generator that reports progress.

    It takes the same parameters as :func:`fit_shift_vae`. Stopping the generator between
    epochs cancels the fit.

    Yields
    ------
    tuple
        ``("progress", epoch, epochs, message, {"loss": value, "epoch": epoch})`` after every
        epoch (the first four items are the standard progress tuple).

    Returns
    -------
    ShiftVAEResult
        The generator's return value, as :func:`fit_shift_vae` returns it.
    """
    import torch

    from napari_microml.runtime.device import describe_device, resolve_device

    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}: choose 'shift' (shift-VAE) or 'plain' (VAE).")
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalisation {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}."
        )
    latent_dim = check_number(latent_dim, "latent_dim", low=1, integer=True)
    epochs = check_number(epochs, "epochs", low=1, integer=True, none_ok=True)
    batch_size = check_number(
        batch_size, "batch_size", low=1, integer=True, unit="spectra", none_ok=True
    )
    learning_rate = check_number(learning_rate, "learning_rate", low=0, high=1, low_open=True)
    noise_scale = check_number(
        noise_scale, "noise_scale", low=0, low_open=True, unit="(normalised intensity)"
    )
    warmup = check_number(warmup, "warmup (fraction of the steps)", low=0, high=1)
    hidden = check_number(hidden, "hidden (units per layer)", low=1, integer=True)
    seed = check_number(seed, "seed", low=0, integer=True)
    X, ax, spatial = check_spectra(spectra, axis, channel_range)
    # 'max' and 'global' ignore the units: divide them out in float64 first, so spectra in
    # any units (× 1e-30 or × 1e300) give the same fit; 'none' feeds the values as they are
    g_lo, g_scale = 0.0, 1.0
    if normalize != "none":
        g_lo, g_hi = finite_range(X)
        g_scale = (g_hi - g_lo) if g_hi > g_lo else (abs(g_lo) or 1.0)
        X = (X - g_lo) / g_scale
    elif np.abs(X).max() > np.finfo(np.float32).max / 1e3:
        raise ValueError(
            "The spectra are too large for normalize='none' (beyond float32); use "
            "normalize='max' or 'global'."
        )
    X = X.astype(np.float32)
    if despike:
        X = _despike(X)
    Xn, offset, scale = _normalize(X, normalize)
    N, L = Xn.shape
    half_span = float(ax[-1] - ax[0]) / 2.0  # axis units per decoder unit (signed)
    coord = (ax - ax[0]) / half_span - 1.0  # -1 .. 1
    if shift_prior is None:
        prior_n = 0.1
    else:
        if not shift_prior > 0:
            raise ValueError("shift_prior must be a positive width in axis units.")
        prior_n = float(shift_prior) / abs(half_span)

    dev = resolve_device(device)
    dev_label = describe_device(dev)
    gen = torch.Generator().manual_seed(int(seed))  # shuffling
    init = torch.Generator().manual_seed(int(seed))  # the weights, then the sampling noise
    net = _build_net(L, int(latent_dim), model, int(hidden), coord)
    _init_weights(net, init)
    net = net.to(dev)
    noise = init if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(int(seed))
    opt = torch.optim.Adam(net.parameters(), lr=float(learning_rate))
    if batch_size is None:
        batch_size = int(min(256, max(8, N // 8)))
    batch_size = int(min(batch_size, N))
    data = torch.as_tensor(Xn, device=dev)
    n_batches = math.ceil(N / batch_size)
    if epochs is None:  # about 600 optimiser steps, at least 30 passes
        epochs = int(min(1000, max(30, math.ceil(600 / n_batches))))
    total_steps = int(epochs) * n_batches
    warm_steps = max(1, int(warmup * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 1.0 if step < 0.7 * total_steps else 0.2
    )
    inv2s2 = 1.0 / (2.0 * noise_scale**2)
    log_prior = math.log(prior_n)
    params = dict(
        axis_first=float(ax[0]),
        axis_last=float(ax[-1]),
        n_channels=L,
        latent_dim=int(latent_dim),
        epochs=int(epochs),
        shift_prior=shift_prior,
        shift_prior_normalized=prior_n,
        model=model,
        normalize=normalize,
        channel_range=channel_range,
        despike=bool(despike),
        seed=int(seed),
        batch_size=batch_size,
        learning_rate=learning_rate,
        noise_scale=noise_scale,
        warmup=warmup,
        hidden=hidden,
    )

    t0 = time.perf_counter()
    history: list[float] = []
    step = 0
    n_shift = 1 if model == "shift" else 0
    for epoch in range(int(epochs)):
        net.train()
        perm = torch.randperm(N, generator=gen).to(dev)
        running = 0.0
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            x = data[idx]
            mu, logvar = net.encode(x)
            std = torch.exp(0.5 * logvar)
            eps = torch.randn(std.shape, generator=noise, dtype=std.dtype, device=std.device)
            sample = mu + std * eps
            if n_shift:
                s, z = sample[:, :1], sample[:, 1:]
            else:
                s, z = None, sample
            xhat = net.decode(s, z)
            rec = ((xhat - x) ** 2).sum(-1) * inv2s2
            kl_terms = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)
            if n_shift:
                # shift latent has prior N(0, prior_n^2)
                kl_s = (
                    log_prior
                    - 0.5 * logvar[:, 0]
                    + (logvar[:, 0].exp() + mu[:, 0] ** 2) / (2 * prior_n**2)
                    - 0.5
                )
                kl = kl_s + kl_terms[:, 1:].sum(-1)
            else:
                kl = kl_terms.sum(-1)
            beta = min(1.0, (step + 1) / warm_steps)
            loss = (rec + beta * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += float((rec + kl).sum().detach())
        history.append(running / N)
        yield (
            *progress(epoch + 1, epochs, f"Epoch {epoch + 1}/{epochs}: loss {history[-1]:.4g}"),
            {"loss": history[-1], "epoch": epoch + 1},
        )

    net.eval()
    with torch.no_grad():
        mus, sds, recs = [], [], []
        for b in range(0, N, 1024):
            x = data[b : b + 1024]
            mu, logvar = net.encode(x)
            if n_shift:
                xhat = net.decode(mu[:, :1], mu[:, 1:])
            else:
                xhat = net.decode(None, mu)
            mus.append(mu.cpu())
            sds.append(torch.exp(0.5 * logvar).cpu())
            recs.append(xhat.cpu())
        mu = torch.cat(mus).numpy()
        sd = torch.cat(sds).numpy()
        rec = torch.cat(recs).numpy()
    net = net.cpu()
    out_dtype = (
        np.float64 if np.asarray(spectra).dtype == np.float64 else np.float32
    )  # keep float64 input's range
    reconstruction = ((rec * scale + offset).astype(np.float64) * g_scale + g_lo).astype(out_dtype)
    shift: np.ndarray | None
    shift_std: np.ndarray | None
    if n_shift:
        raw = mu[:, 0].astype(np.float64) * half_span
        shift_offset = float(np.median(raw))
        shift = (raw - shift_offset).astype(np.float32).reshape(spatial)
        shift_std = (sd[:, 0] * abs(half_span)).astype(np.float32).reshape(spatial)
    else:
        shift = shift_std = None
        shift_offset = 0.0
    return ShiftVAEResult(
        shift=shift,
        shift_std=shift_std,
        latents=mu[:, n_shift:].astype(np.float32).reshape(*spatial, -1),
        latents_std=sd[:, n_shift:].astype(np.float32).reshape(*spatial, -1),
        reconstruction=reconstruction.reshape(*spatial, L),
        axis=ax,
        loss_history=history,
        device=dev_label,
        params=params,
        model=model,
        shift_offset=shift_offset,
        fit_seconds=time.perf_counter() - t0,
        _net=net,
        _half_span=half_span,
    )


def fit_shift_vae(
    spectra,
    *,
    axis=None,
    latent_dim: int = 2,
    epochs: int | None = None,
    shift_prior: float | None = None,
    model: str = "shift",
    normalize: str = "max",
    channel_range=None,
    despike: bool = False,
    seed: int = 0,
    device="auto",
    batch_size: int | None = None,
    learning_rate: float = 2e-3,
    noise_scale: float = 0.05,
    warmup: float = 0.3,
    hidden: int = 64,
) -> ShiftVAEResult:
    """Fit a shift-VAE (or a plain VAE) to a stack of spectra or a spectrum image.

    Parameters
    ----------
    spectra : array (N, L) or (H, W, L)
        Spectra with the spectral axis last. Results for (H, W, L) come back as (H, W) maps.
    axis : array (L,), optional
        Spectral axis values (e.g. energy loss in eV); channels 0..L-1 when None.
    latent_dim : int
        Number of content latents (besides the shift latent).
    epochs : int, optional
        Passes over the data (KL weight warms up over the first ``warmup`` fraction). Default:
        about 600 optimiser steps and at least 30 epochs (30 for 5,000 spectra, 120 for 40).
    shift_prior : float, optional
        Standard deviation of the shift prior, in axis units (default: 5 % of the axis span,
        i.e. 0.1 in the decoder's [-1, 1] coordinates). Make it larger for large shifts.
    model : {'shift', 'plain'}
        'shift' for the shift-VAE, 'plain' for an ordinary VAE (no shift latent, for comparison).
    normalize : {'max', 'global', 'none'}
        How spectra are scaled before fitting (see ``spectra.preprocess.normalize``).
    channel_range : (start, stop), optional
        Channel indices (half-open) to fit; others are ignored.
    despike : bool
        Remove single-channel spikes by a running median first.
    seed : int
        Seeds weights, shuffling and sampling: the same seed on the same device gives the
        same result.
    device : {'auto', 'cuda', 'mps', 'cpu'}
        Where to fit; 'auto' picks cuda, then mps, then cpu.
    batch_size : int, optional
        Spectra per optimiser step (default ``min(256, max(8, N // 8))``).
    learning_rate : float
        Adam step size (default 2e-3).
    noise_scale : float
        The Gaussian likelihood's standard deviation in *normalised* intensity units (default
        0.05; smaller = sharper reconstructions, weaker prior).
    warmup : float
        Fraction (0–1) of the steps over which the KL weight ramps from 0 to 1 (default 0.3).
    hidden : int
        Units per hidden layer of the encoder and decoder MLPs (default 64).

    Returns
    -------
    ShiftVAEResult
        ``shift`` in axis units relative to the median (positive = towards larger axis values),
        ``latents``, ``reconstruction``, ``loss_history``, ``device``, ``params``.

    Raises
    ------
    ValueError
        Wrong dimensionality, a single channel, NaN/inf spectra or an axis of the wrong length.
    """
    return drain(
        fit_shift_vae_iter(
            spectra,
            axis=axis,
            latent_dim=latent_dim,
            epochs=epochs,
            shift_prior=shift_prior,
            model=model,
            normalize=normalize,
            channel_range=channel_range,
            despike=despike,
            seed=seed,
            device=device,
            batch_size=batch_size,
            learning_rate=learning_rate,
            noise_scale=noise_scale,
            warmup=warmup,
            hidden=hidden,
        )
    )
