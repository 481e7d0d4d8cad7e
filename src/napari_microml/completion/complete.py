"""Complete a partial (sparse) scan.

Default method (``model="kriging"``): a fast local Gaussian process (kriging,
:mod:`~napari_microml.completion.kriging`) with a Matérn-5/2 kernel whose length, amplitude and
pixel noise are fitted to the scan by marginal likelihood. Its σ is either that of a new
measurement at the pixel (signal + the fitted pixel noise: what a re-scan would read; the
default) or that of the noise-free signal (``sigma="signal"``). Where the scan shows a crystal
lattice, a Fourier-series mean on its reciprocal vectors is used if a held-out check on the
measured pixels favours it, and the σ is calibrated on the same held-out pixels
(:func:`~napari_microml.completion.kriging.lattice_kriging_iter`). ``model="local-gp"`` is the
earlier, slower local GP (Matérn-3/2, 8-px blocks), kept as the reference the benchmark judges by.

Networks (``model="default"``, ``"pixel"`` or a ``.pt``): the network (the shared
``nets.unet.UNet``) sees four planes: the measured values (normalised from the measured pixels
only, 0 where unmeasured), the mask, a normalised-convolution fill
(:func:`~napari_microml.completion.fill.normalized_fill`: Gaussian-weighted mean of the
measured neighbours at the smallest scale that holds ≥ 4 effective samples; computed on the
whole frame before tiling) and the log distance to the nearest measured pixel. It predicts a
residual on the fill and a log-variance (heteroscedastic Gaussian head); the σ is rescaled by a
factor fitted on held-out synthetic images (stored in the weights' meta as ``sigma_scale``);
that is the σ of the signal, and the σ of a measurement (the default) adds the pixel noise fitted
on the measured pixels as kriging fits it. The predicted values are clipped to the range of the
frame's measured values. Measured pixels are returned exactly (float64 output for float64 input
and for integers wider than 16 bits, so none is rounded), with uncertainty 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_microml.completion.fill import normalized_fill
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.workers import drain, progress

N_FEATURES = 4
KRIGING = "kriging"  # the default: fast local GP, Matérn-5/2, lattice mean when the scan shows one
LOCAL_GP = "local-gp"  # model name of the earlier, slower local GP (Matérn-3/2), the reference
# name -> settings: neighbours per block, block edge, fit neighbourhoods × size, kernel; with
# "lattice"/"calibrate": kriging.lattice_kriging_iter, else kriging.local_gp_iter
KRIGING_SETTINGS: dict[str, dict] = {
    KRIGING: dict(
        k=64,
        block="auto",
        n_fit=48,
        fit_k=48,
        kernel="matern52",
        lattice=True,
        calibrate=True,
        overlap="auto",
    ),
    LOCAL_GP: dict(k=64, block=8, n_fit=96, fit_k=64, kernel="matern32"),
}
MIN_MEASURED = 8  # fewer measured pixels say nothing about how the image varies


@dataclass
class CompletionResult:
    """A completed scan.

    image : (H, W) or (T, H, W), equal to the input values where ``mask`` is True; float64 when
        the input is float64 or an integer wider than 16 bits, else float32.
    uncertainty : same shape and dtype, 1σ in the input's intensity units, 0 at measured pixels
        (see ``sigma``).
    sigma : which σ: ``"measurement"`` (a re-scan's reading: signal + pixel noise),
        ``"signal"`` (the noise-free signal).
    mask : bool, same shape.
    """

    image: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    model: str
    device: str
    provenance: dict = field(default_factory=dict)
    sigma: str = "measurement"


def features(values_n: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Build the network input ``(4, H, W)`` float32 from normalised values and the mask.

    Planes: values (0 where unmeasured), mask, normalised-convolution fill (the residual base),
    log(1 + distance to the nearest measured pixel) / 3.
    """
    dist = ndi.distance_transform_edt(~mask)
    return np.stack(
        [
            np.where(mask, values_n, 0).astype(np.float32),
            mask.astype(np.float32),
            normalized_fill(values_n, mask),
            (np.log1p(dist) / 3.0).astype(np.float32),
        ]
    )


def measured_range(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Intensity range (0.5 and 99.8 percentiles) of the measured pixels only."""
    measured = values[mask]
    lo, hi = np.percentile(measured, [0.5, 99.8])
    if (
        not hi > lo
    ):  # a few outliers on a flat scan: their extremes set the span (relative, no floor)
        lo, hi = measured.min(), measured.max()
    return float(lo), float(hi)


def output_dtype(dtype) -> np.dtype:
    """Return the result dtype that holds every measured value exactly.

    float64 for float64 input and integers wider than 16 bits (float32 would round them), else
    float32.
    """
    dtype = np.dtype(dtype)
    wide = (dtype.kind == "f" and dtype.itemsize >= 8) or (
        dtype.kind in "iu" and dtype.itemsize > 2
    )
    return np.dtype(np.float64 if wide else np.float32)


def check_scan(values, mask) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate a partial scan.

    Returns float64 (T, H, W) values, bool (T, H, W) mask and whether the input was a stack;
    raises ValueError with a plain sentence for anything not completable.
    """
    if isinstance(values, (list, tuple)) and len(values) == 0:
        raise ValueError("The scan stack is empty: there are no frames to complete.")
    v = np.asarray(values)
    m = np.asarray(mask)
    if v.dtype.kind not in "biuf":
        raise ValueError(f"The scan values must be numbers, not {v.dtype} values.")
    if m.dtype != bool:
        if m.dtype.kind not in "biuf":
            raise ValueError("The mask must be boolean (True where a pixel was measured).")
        m = m != 0
    if v.ndim == 3 and v.shape[-1] in (3, 4) and v.shape[0] > 4:
        raise ValueError(
            f"The scan values look like an RGB(A) colour picture {v.shape}; "
            "a partial scan is a single-channel (grey) image."
        )
    if v.ndim not in (2, 3):
        raise ValueError(
            f"The scan values have {v.ndim} dimensions {v.shape}; expected (H, W) or "
            "a stack (T, H, W)."
        )
    if v.shape != m.shape:
        raise ValueError(
            f"The scan values {v.shape} and the mask {m.shape} must have the same shape."
        )
    if v.size == 0 and v.ndim == 3 and v.shape[0] == 0:
        raise ValueError("The scan stack is empty: there are no frames to complete.")
    if min(v.shape[-2:]) < 8:
        raise ValueError(
            f"The scan is only {v.shape[-2]}×{v.shape[-1]} pixels; at least 8×8 are needed."
        )
    v3 = v.astype(np.float64).reshape((-1,) + v.shape[-2:])
    m3 = m.reshape(v3.shape)
    for t in range(len(v3)):
        n = int(m3[t].sum())
        where = f" in frame {t}" if v.ndim == 3 else ""
        if n == 0:
            raise ValueError(
                f"The mask marks no measured pixel{where}: there is nothing to complete from."
            )
        if n == m3[t].size:
            raise ValueError(f"Every pixel is measured{where}: there is nothing to complete.")
        if n < MIN_MEASURED:
            raise ValueError(
                f"Only {n} pixel{'s are' if n > 1 else ' is'} measured{where}; at least "
                f"{MIN_MEASURED} are needed to tell how the image varies between them."
            )
        if not np.isfinite(v3[t][m3[t]]).all():
            raise ValueError(
                f"Some measured pixels{where} are NaN or infinite; mark them as unmeasured "
                "in the mask or fix the data."
            )
    return v3, m3, v.ndim == 3


def complete_frame(
    net,
    predict,
    values: np.ndarray,
    mask: np.ndarray,
    *,
    sigma_scale: float = 1.0,
    tile: int = 512,
    batch_size: int = 1,
    pixel_noise: bool = False,
):
    """Complete one (H, W) frame: yields ``(done, total)`` tiles, returns (image, σ, noise sd).

    ``pixel_noise``: add the frame's pixel noise, fitted on its measured pixels, to the network's
    σ of the signal (the σ of a new measurement); otherwise the noise sd is None.
    """
    from napari_microml.completion.kriging import standardise
    from napari_microml.runtime.tiling import tiled_predict

    standardise(values[mask])  # a uniform scan: a clear error, not σ = 0 or residue on no range
    lo, hi = measured_range(values, mask)
    span = hi - lo
    x = features((values - lo) / span, mask)
    gen = tiled_predict(
        predict,
        x,
        out_channels=2,
        tile=tile,
        overlap=32,
        batch_size=batch_size,
        multiple=getattr(net, "multiple", 8),
    )
    out = yield from gen
    measured = values[mask]
    # no value outside the measured ones is supported by the scan: the network's excursions
    # (a dark bias in flat vacuum between thick scan lines) stop at the measured range
    mean = np.clip((x[2] + out[0].astype(np.float64)) * span + lo, measured.min(), measured.max())
    sigma = np.exp(0.5 * np.clip(out[1].astype(np.float64), -20, 10)) * sigma_scale * span
    noise_sd = None
    if pixel_noise:
        from napari_microml.completion.kriging import fit_gp_hyperparameters

        fit = {k: KRIGING_SETTINGS[KRIGING][k] for k in ("n_fit", "kernel")}
        p = fit_gp_hyperparameters(values, mask, k=KRIGING_SETTINGS[KRIGING]["fit_k"], **fit)
        noise_sd = float(np.sqrt(p["noise"]) * standardise(values[mask])[2])
        sigma = np.sqrt(sigma**2 + noise_sd**2)
    return np.where(mask, values, mean), np.where(mask, 0.0, sigma), noise_sd


def complete_scan_iter(
    values,
    mask,
    *,
    model=KRIGING,
    device="auto",
    tile: int = 512,
    uncertainty: bool = True,
    sigma: str = "measurement",
    input_name: str | None = None,
):
    """Complete a partial scan like :func:`complete_scan`, as a generator that reports progress.

    It takes the same parameters as :func:`complete_scan`. Stopping the generator between
    blocks or tiles cancels the run.

    Yields
    ------
    tuple
        ``("progress", done, total, message)`` after every kriging block or network tile,
        frame by frame for a stack.

    Returns
    -------
    CompletionResult
        The generator's return value, as :func:`complete_scan` returns it.

    Raises
    ------
    ValueError
        As :func:`complete_scan`.
    """
    from napari_microml.completion.kriging import SIGMA_KINDS

    v3, m3, is_stack = check_scan(values, mask)
    out_dtype = output_dtype(np.asarray(values).dtype)
    if int(tile) < 64:
        raise ValueError("The tile size must be at least 64 pixels.")
    if sigma not in SIGMA_KINDS:
        raise ValueError(
            f"sigma must be 'measurement' (what a re-scan would read: signal + pixel noise) "
            f"or 'signal' (the noise-free signal), not {sigma!r}."
        )
    if isinstance(model, str) and model in KRIGING_SETTINGS:
        result = yield from _kriging_iter(v3, m3, is_stack, uncertainty, input_name, model, sigma)
        return _cast(result, out_dtype)
    from napari_microml.nets.registry import load_model
    from napari_microml.runtime.device import describe_device, resolve_device

    dev = resolve_device(device)
    net, info = load_model("completion", model, dev)
    scale = float(info.get("meta", {}).get("sigma_scale", 1.0))
    from napari_microml.nets.unet import batch_predictor

    predict = batch_predictor(net, dev)
    batch = 1 if dev.type == "cpu" else 4  # CPU: one tile at a time, less memory
    measurement = sigma == "measurement" and uncertainty
    image, sig, extras = yield from _run_frames(
        lambda t: complete_frame(
            net,
            predict,
            v3[t],
            m3[t],
            sigma_scale=scale,
            tile=tile,
            batch_size=batch,
            pixel_noise=measurement,
        ),
        len(v3),
        "tile",
        uncertainty,
    )
    m_out = m3 if is_stack else m3[0]
    if not is_stack:
        image, sig = image[0], sig[0]
    label = describe_device(dev)
    prov = make_provenance(
        "complete_scan",
        parameters={
            "tile": tile,
            "uncertainty": uncertainty,
            "sigma": sigma,
            "sigma_scale": scale,
            "pixel_noise_sd": [e[0] for e in extras] if measurement else None,
            "coverage": float(m3.mean()),
        },
        model={k: info.get(k) for k in ("name", "file", "sha256")},
        device=label,
        input_name=input_name,
    )
    return _cast(
        CompletionResult(
            image=image,
            uncertainty=sig,
            mask=m_out.copy(),
            model=str(info.get("name")),
            device=label,
            provenance=prov,
            sigma=sigma,
        ),
        out_dtype,
    )


def _cast(result: CompletionResult, dtype) -> CompletionResult:
    """Cast the result to ``dtype`` (see :func:`output_dtype`); measured pixels stay exact."""
    result.image = result.image.astype(dtype, copy=False)
    result.uncertainty = result.uncertainty.astype(dtype, copy=False)
    return result


def _run_frames(frame_gen, n: int, unit: str, uncertainty: bool):
    """Run ``frame_gen(t)`` for every frame t < n, relaying progress over the whole stack.

    Each is a generator yielding ``(done, total)`` and returning ``(image, sigma, *extra)``.
    Returns the stacked images, sigmas (zeros unless ``uncertainty``) and the per-frame extras.
    """
    images, sigmas, extras = [], [], []
    for t in range(n):
        gen = frame_gen(t)
        while True:
            try:
                done, total = next(gen)
            except StopIteration as stop:
                img, sig, *extra = stop.value
                break
            yield progress(t * total + done, n * total, f"frame {t + 1}/{n}, {unit} {done}/{total}")
        images.append(img)
        sigmas.append(sig if uncertainty else np.zeros_like(sig))
        extras.append(extra)
    return np.stack(images), np.stack(sigmas), extras


def _kriging_iter(v3, m3, is_stack: bool, uncertainty: bool, input_name, model: str, sigma: str):
    """``complete_scan`` with a local GP instead of a network (CPU, numpy)."""
    from napari_microml.completion.kriging import lattice_kriging_iter, local_gp_iter

    settings = KRIGING_SETTINGS[model]
    run = lattice_kriging_iter if "lattice" in settings else local_gp_iter
    image, sig, extras = yield from _run_frames(
        lambda t: run(v3[t], m3[t], sigma=sigma, **settings),
        len(v3),
        "kriging blocks",
        uncertainty,
    )
    fitted = [
        {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in params.items()}
        for (params,) in extras
    ]
    m_out = m3 if is_stack else m3[0]
    if not is_stack:
        image, sig = image[0], sig[0]
    what = {
        "measurement": "1σ of a new measurement (signal + fitted pixel noise)",
        "signal": "1σ of the noise-free signal",
    }[sigma]
    prov = make_provenance(
        "complete_scan",
        parameters={
            "method": f"local Gaussian process (kriging), {settings['kernel']}"
            + (
                ", crystal-lattice mean where a held-out check favours it"
                if settings.get("lattice")
                else ""
            )
            + (", σ calibrated on held-out measured pixels" if settings.get("calibrate") else ""),
            "settings": settings,
            "uncertainty": uncertainty,
            "sigma": sigma,
            "sigma_meaning": what,
            "coverage": float(m3.mean()),
            "fitted_hyperparameters": fitted,
        },
        model={"name": model},
        device="cpu (numpy)",
        input_name=input_name,
    )
    return CompletionResult(
        image=image,
        uncertainty=sig,
        mask=m_out.copy(),
        model=model,
        device="cpu (numpy)",
        provenance=prov,
        sigma=sigma,
    )


def complete_scan(
    values,
    mask,
    *,
    model=KRIGING,
    device="auto",
    tile: int = 512,
    uncertainty: bool = True,
    sigma: str = "measurement",
    input_name: str | None = None,
) -> CompletionResult:
    """Fill in the unmeasured pixels of a partial scan.

    Parameters
    ----------
    values : ndarray (H, W) or (T, H, W)
        Scan intensities in any units and offset (counts, amperes, floats); values where
        ``mask`` is False are ignored (0 or NaN are fine).
    mask : ndarray of bool, same shape
        True where a pixel was measured (e.g. from
        :func:`~napari_microml.completion.masks.scan_mask`).
    model : str or torch.nn.Module
        ``"kriging"`` (default): a local Gaussian process fitted to this scan (Matérn-5/2,
        no network; memory bounded by its blocks, so 2048² and larger run in pieces). Where
        the scan shows a crystal lattice, its Fourier series (fitted to the measured pixels)
        is the mean and the GP krigs the rest - only if that predicts left-out measured pixels
        better than plain kriging; the σ is scaled so that 95 % of left-out measured pixels
        fall within 2σ (``result.provenance`` records the choice and the factor).
        ``"local-gp"``: the earlier local GP (Matérn-3/2, several times slower), the
        benchmark's reference. A shipped network (``"default"`` = adversarially refined,
        ``"pixel"`` = pixel loss only), a ``.pt`` path or a module: ``device`` and ``tile``
        apply to these only.
    device : str
        ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"`` (networks only).
    tile : int
        Network tile edge (px); memory is bounded by the tile, not by the image size.
    uncertainty : bool
        When False the returned uncertainty is all zeros.
    sigma : {"measurement", "signal"}
        ``"measurement"`` (default) reports the 1σ of what a new measurement of the pixel
        would read — the signal's uncertainty plus the pixel noise estimated from the scan —
        the figure to compare with a re-scan; ``"signal"`` the 1σ of the noise-free signal.
        Networks: their calibrated σ of the signal, plus (``"measurement"``) the pixel noise
        fitted on the frame's measured pixels as kriging fits it.
    input_name : str, optional
        Name of the input (file or layer) recorded in ``provenance['input_layer']``.

    Returns
    -------
    CompletionResult
        ``image`` equals ``values`` exactly at measured pixels (float64 for float64 input and
        integers wider than 16 bits, float32 otherwise); ``uncertainty`` is 1σ in the input's
        units, 0 at measured pixels and > 0 everywhere else.

    Raises
    ------
    ValueError
        Shape mismatch, an empty stack, fewer than 8 measured pixels, every pixel measured,
        all measured values equal (nothing sets a scale for the uncertainty), NaN at measured
        pixels, RGB input or wrong dimensionality.
    """
    return drain(
        complete_scan_iter(
            values,
            mask,
            model=model,
            device=device,
            tile=tile,
            uncertainty=uncertainty,
            sigma=sigma,
            input_name=input_name,
        )
    )
