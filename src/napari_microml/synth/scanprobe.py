"""An image as a scanning-probe microscope (STM/AFM) would record it: heights in nm with a tilted
sample plane, scan-line offsets and streaks, creep (shear), 1/f noise along the raster and
atoms bright or dark. Used to check the tools' defaults on such data (tests, benchmarks)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def corrugation(image: np.ndarray) -> float:
    """The 1–99 % spread of an image's detail finer than ~8 px (the atomic corrugation).

    Parameters
    ----------
    image : (H, W) array

    Returns
    -------
    float
        In the image's units.
    """
    x = np.asarray(image, np.float64)
    lo, hi = np.percentile(x - ndi.gaussian_filter(x, 8), (1, 99))
    return float(hi - lo)


def raster_noise(shape, rng: np.random.Generator) -> np.ndarray:
    """Unit-std 1/f (pink) noise in time along the raster (row after row), as a feedback loop's.

    Parameters
    ----------
    shape : (int, int)
    rng : numpy.random.Generator

    Returns
    -------
    (H, W) float64 array
    """
    n = int(shape[0]) * int(shape[1])
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    spec = (rng.normal(size=f.size) + 1j * rng.normal(size=f.size)) / np.sqrt(f)
    s = np.fft.irfft(spec, n=n)
    return (s / s.std()).reshape(shape)


def scanning_probe(
    image: np.ndarray,
    *,
    plane: float = 5.0,
    lines: float = 1.0,
    shear: float = 0.03,
    noise: float = 0.0,
    streaks: int = 0,
    invert: bool = False,
    corrugation_nm: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """Turn an atomic-resolution image into an STM/AFM-like topograph.

    Parameters
    ----------
    image : (H, W) array
        Bright atoms on a background, any units.
    plane : float
        Span of the sample tilt over the frame, in corrugations.
    lines : float
        Scan-line (row) offsets, uniform within ± half this many corrugations.
    shear : float
        Creep along the rows per row (0.03: 3 %); a column at (r, c) moves to c − shear·r.
    noise : float
        1/f raster noise, its std in corrugations.
    streaks : int
        Number of streaks: part of one row (20 px to half a row) off by ±2 corrugations.
    invert : bool
        Atoms as depressions (dark).
    corrugation_nm : float
        The atomic corrugation in nm.
    seed : int
        Random seed.

    Returns
    -------
    (H, W) float64 array
        Heights in nm (negative around the frame's start).
    """
    rng = np.random.default_rng(seed)
    src = np.asarray(image, np.float64)
    x: np.ndarray = (src - np.median(src)) / corrugation(src) * corrugation_nm
    if invert:
        x = -x
    h, w = x.shape
    if shear:
        x = ndi.affine_transform(x, np.array([[1.0, 0.0], [shear, 1.0]]), order=3, mode="reflect")
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    x = x + plane * corrugation_nm * (0.8 * yy + 0.6 * xx) - 0.3
    x = x + rng.uniform(-0.5, 0.5, (h, 1)) * lines * corrugation_nm
    if noise:
        x = x + noise * corrugation_nm * raster_noise(x.shape, rng)
    for _ in range(streaks):
        r, c = int(rng.integers(h)), int(rng.integers(w // 2))
        x[r, c : c + int(rng.integers(20, max(21, w // 2)))] += rng.choice([-2, 2]) * corrugation_nm
    return x


def write_sxm(
    path,
    channels: dict[str, np.ndarray],
    *,
    size_nm: tuple[float, float],
    scan_dir: str = "up",
    units: dict[str, str] | None = None,
    offset_nm: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Write a Nanonis .sxm file as the instrument records it (for tests and benchmarks).

    Parameters
    ----------
    path : str or Path
    channels : dict
        Channel name -> ``(forward, backward)`` pair of upright (H, W) images, as the vendor's
        viewer shows them, in SI units (m for Z). The file holds them in recording order:
        a backward line right to left, an upward scan's first line at the bottom.
    size_nm : (float, float)
        The frame's (height, width) in nm.
    scan_dir : {"up", "down"}
    units : dict, optional
        Channel name -> unit (default "m").
    offset_nm : (float, float)
        The frame centre's (x, y) in nm.
    """
    pairs = {k: [np.asarray(v, np.float64) for v in vs] for k, vs in channels.items()}
    h, w = next(iter(pairs.values()))[0].shape
    rows = "".join(
        f"\t{i}\t{name}\t{(units or {}).get(name, 'm')}\tboth\t1.000E+0\t0.000E+0\n"
        for i, name in enumerate(pairs)
    )
    head = (
        ":NANONIS_VERSION:\n2\n:SCANIT_TYPE:\n              FLOAT            MSBFIRST\n"
        f":SCAN_PIXELS:\n       {w}       {h}\n"
        f":SCAN_RANGE:\n           {size_nm[1] * 1e-9:.6E}           {size_nm[0] * 1e-9:.6E}\n"
        f":SCAN_OFFSET:\n           {offset_nm[0] * 1e-9:.6E}           {offset_nm[1] * 1e-9:.6E}\n"
        f":SCAN_ANGLE:\n            0.000E+0\n:SCAN_DIR:\n{scan_dir}\n"
        ":BIAS:\n            1.000E-1\n:SCAN_TIME:\n             5.000E-1             5.000E-1\n"
        ":DATA_INFO:\n\tChannel\tName\tUnit\tDirection\tCalibration\tOffset\n"
        f"{rows}\n:SCANIT_END:\n\n\n"
    )
    body = []
    for fwd, bwd in pairs.values():
        for img, backward in ((fwd, False), (bwd, True)):
            rec = img[::-1] if scan_dir == "up" else img
            body.append((rec[:, ::-1] if backward else rec).astype(">f4").tobytes())
    with open(path, "wb") as fh:
        fh.write(head.encode("latin-1") + b"\x1a\x04" + b"".join(body))
