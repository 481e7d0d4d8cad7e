"""Complete a partial (sparse) scan: U-Net residual on a normalised-convolution fill.

The network (the shared ``nets.unet.UNet``) sees four planes: the measured values (normalised
from the measured pixels only, 0 where unmeasured), the mask, a normalised-convolution fill
(:func:`~napari_microml.completion.fill.normalized_fill`: Gaussian-weighted mean of the
measured neighbours at the smallest scale that holds ≥ 4 effective samples; computed on the
whole frame before tiling) and the log distance to the nearest measured pixel. It predicts a
residual on the fill and a log-variance (heteroscedastic Gaussian head); the σ is rescaled by a factor
fitted on held-out synthetic images (stored in the weights' meta as ``sigma_scale``).
Measured pixels are returned exactly, with uncertainty 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_microml.completion.fill import normalized_fill
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.workers import drain, progress

N_FEATURES = 4
LOCAL_GP = "local-gp"  # model name that selects kriging instead of a network


@dataclass
class CompletionResult:
    """A completed scan.

    image : (H, W) or (T, H, W) float32, equal to the input values where ``mask`` is True.
    uncertainty : same shape float32, 1σ in the input's intensity units, 0 at measured pixels.
    mask : bool, same shape.
    """

    image: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    model: str
    device: str
    provenance: dict = field(default_factory=dict)


def features(values_n: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Network input ``(4, H, W)`` float32 from normalised values and the mask: values (0 where
    unmeasured), mask, normalised-convolution fill (the residual base), log(1 + distance to the
    nearest measured pixel) / 3."""
    dist = ndi.distance_transform_edt(~mask)
    return np.stack([
        np.where(mask, values_n, 0).astype(np.float32),
        mask.astype(np.float32),
        normalized_fill(values_n, mask),
        (np.log1p(dist) / 3.0).astype(np.float32),
    ])


def measured_range(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Intensity range (0.5 and 99.8 percentiles) of the measured pixels only."""
    lo, hi = np.percentile(values[mask], [0.5, 99.8])
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        hi = lo + 1.0
    return float(lo), float(hi)


def check_scan(values, mask) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate a partial scan; return float32 (T, H, W) values, bool (T, H, W) mask and whether
    the input was a stack. Raises ValueError with a plain sentence for anything not completable."""
    v = np.asarray(values)
    m = np.asarray(mask)
    if v.dtype.kind not in "biuf":
        raise ValueError(f"The scan values must be numbers, not {v.dtype} values.")
    if m.dtype != bool:
        if m.dtype.kind not in "biuf":
            raise ValueError("The mask must be boolean (True where a pixel was measured).")
        m = m != 0
    if v.ndim == 3 and v.shape[-1] in (3, 4) and v.shape[0] > 4:
        raise ValueError(f"The scan values look like an RGB(A) colour picture {v.shape}; "
                         "a partial scan is a single-channel (grey) image.")
    if v.ndim not in (2, 3):
        raise ValueError(f"The scan values have {v.ndim} dimensions {v.shape}; expected (H, W) or "
                         "a stack (T, H, W).")
    if v.shape != m.shape:
        raise ValueError(f"The scan values {v.shape} and the mask {m.shape} must have the same shape.")
    if min(v.shape[-2:]) < 8:
        raise ValueError(f"The scan is only {v.shape[-2]}×{v.shape[-1]} pixels; at least 8×8 are needed.")
    v3 = v.astype(np.float32).reshape((-1,) + v.shape[-2:])
    m3 = m.reshape(v3.shape)
    for t in range(len(v3)):
        n = int(m3[t].sum())
        where = f" in frame {t}" if v.ndim == 3 else ""
        if n == 0:
            raise ValueError(f"The mask marks no measured pixel{where}: there is nothing to complete from.")
        if n == m3[t].size:
            raise ValueError(f"Every pixel is measured{where}: there is nothing to complete.")
        if not np.isfinite(v3[t][m3[t]]).all():
            raise ValueError(f"Some measured pixels{where} are NaN or infinite; mark them as unmeasured "
                             "in the mask or fix the data.")
    return v3, m3, v.ndim == 3


def complete_frame(net, predict, values: np.ndarray, mask: np.ndarray, *, sigma_scale: float = 1.0,
                   tile: int = 512, batch_size: int = 1):
    """Generator: complete one (H, W) frame; yields ``(done, total)`` tiles, returns (image, σ)."""
    from napari_microml.runtime.tiling import tiled_predict

    measured = values[mask]
    if measured.min() == measured.max():  # a uniform scan (e.g. vacuum, no counts): nothing varies,
        # so the constant is the only completion the data support; the network would paint its
        # residual on a span it cannot normalise
        return np.full(values.shape, measured[0], np.float32), np.zeros(values.shape, np.float32)
    lo, hi = measured_range(values, mask)
    span = hi - lo
    x = features((values - lo) / span, mask)
    gen = tiled_predict(predict, x, out_channels=2, tile=tile, overlap=32, batch_size=batch_size,
                        multiple=getattr(net, "multiple", 8))
    out = yield from gen
    mean = (x[2] + out[0]) * span + lo
    sigma = np.exp(0.5 * np.clip(out[1], -20, 10)) * sigma_scale * span
    image = np.where(mask, values, mean).astype(np.float32)
    sigma = np.where(mask, 0, sigma).astype(np.float32)
    return image, sigma


def complete_scan_iter(values, mask, *, model="default", device="auto", tile: int = 512,
                       uncertainty: bool = True, input_name: str | None = None):
    """Generator twin of :func:`complete_scan`: yields progress tuples, returns a CompletionResult."""
    from napari_microml.nets.registry import load_model
    from napari_microml.runtime.device import describe_device, resolve_device

    v3, m3, is_stack = check_scan(values, mask)
    if int(tile) < 64:
        raise ValueError("The tile size must be at least 64 pixels.")
    if isinstance(model, str) and model == LOCAL_GP:
        return (yield from _kriging_iter(v3, m3, is_stack, uncertainty, input_name))
    dev = resolve_device(device)
    net, info = load_model("completion", model, dev)
    scale = float(info.get("meta", {}).get("sigma_scale", 1.0))
    from napari_microml.nets.unet import batch_predictor

    predict = batch_predictor(net, dev)
    batch = 1 if dev.type == "cpu" else 4  # CPU: one tile at a time, less memory
    image, sigma, _ = yield from _run_frames(
        lambda t: complete_frame(net, predict, v3[t], m3[t], sigma_scale=scale, tile=tile, batch_size=batch),
        len(v3), "tile", uncertainty)
    m_out = m3 if is_stack else m3[0]
    if not is_stack:
        image, sigma = image[0], sigma[0]
    label = describe_device(dev)
    prov = make_provenance(
        "complete_scan",
        parameters={"tile": tile, "uncertainty": uncertainty, "sigma_scale": scale,
                    "coverage": float(m3.mean())},
        model={k: info.get(k) for k in ("name", "file", "sha256")}, device=label, input_name=input_name)
    return CompletionResult(image=image, uncertainty=sigma, mask=m_out.copy(), model=str(info.get("name")),
                            device=label, provenance=prov)


def _run_frames(frame_gen, n: int, unit: str, uncertainty: bool):
    """Run ``frame_gen(t)`` for every frame t < n — a generator yielding ``(done, total)`` and
    returning ``(image, sigma, *extra)`` — relaying progress over the whole stack. Returns the
    stacked images, sigmas (zeros unless ``uncertainty``) and the per-frame extras."""
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


def _kriging_iter(v3, m3, is_stack: bool, uncertainty: bool, input_name):
    """``complete_scan`` with the local GP instead of a network (CPU, numpy)."""
    from napari_microml.completion.kriging import local_gp_iter

    image, sigma, extras = yield from _run_frames(lambda t: local_gp_iter(v3[t], m3[t]), len(v3),
                                                  "kriging blocks", uncertainty)
    fitted = [{k: round(float(v), 6) for k, v in params.items()} for (params,) in extras]
    m_out = m3 if is_stack else m3[0]
    if not is_stack:
        image, sigma = image[0], sigma[0]
    prov = make_provenance(
        "complete_scan", parameters={"method": "local Gaussian process (kriging)", "uncertainty": uncertainty,
                                     "coverage": float(m3.mean()), "fitted_hyperparameters": fitted},
        model={"name": LOCAL_GP}, device="cpu (numpy)", input_name=input_name)
    return CompletionResult(image=image, uncertainty=sigma, mask=m_out.copy(), model=LOCAL_GP,
                            device="cpu (numpy)", provenance=prov)


def complete_scan(values, mask, *, model="default", device="auto", tile: int = 512,
                  uncertainty: bool = True, input_name: str | None = None) -> CompletionResult:
    """Fill in the unmeasured pixels of a partial scan.

    Parameters
    ----------
    values : ndarray (H, W) or (T, H, W)
        Scan intensities in any units (counts, floats); values where ``mask`` is False are
        ignored (0 or NaN are fine).
    mask : ndarray of bool, same shape
        True where a pixel was measured (e.g. from :func:`~napari_microml.completion.masks.scan_mask`).
    model : str or torch.nn.Module
        Shipped model name (``"default"`` = adversarially refined, ``"pixel"`` = pixel loss
        only), a ``.pt`` path or a module, or ``"local-gp"``: no network, a local Gaussian
        process (kriging, :mod:`~napari_microml.completion.kriging`) with hyperparameters fitted
        to this scan — seconds instead of a fraction of one, and the better choice on smooth,
        very sparse scans (e.g. spirals below 1/50 coverage); ``device`` is then ignored.
    device : str
        ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
    tile : int
        Tile edge (px); memory is bounded by the tile, not by the image size.
    uncertainty : bool
        When False the returned uncertainty is all zeros.

    Returns
    -------
    CompletionResult
        ``image`` equals ``values`` at measured pixels; ``uncertainty`` is a calibrated 1σ in
        the input's intensity units (0 at measured pixels).

    Raises
    ------
    ValueError
        Shape mismatch, no measured pixel, every pixel measured, NaN at measured pixels,
        RGB input or wrong dimensionality.
    """
    return drain(complete_scan_iter(values, mask, model=model, device=device, tile=tile,
                                    uncertainty=uncertainty, input_name=input_name))
