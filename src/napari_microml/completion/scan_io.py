"""Real sparse acquisitions: scan positions + measured values → a (values, mask) grid.

A sparse STEM acquisition (random, spiral, Lissajous ... scan) is a list of probe positions and
one detector value per position. The completer works on a pixel grid, so this module puts the
values on the grid (:func:`rasterise`), reads position files (:func:`read_scan_csv`,
:func:`read_scan_info`) and turns a 4D-STEM movie (one diffraction frame per position) into one
value per position (:func:`values_from_movie`, a virtual detector).

Coordinate convention
---------------------
Everything returned here is ``(row, col)`` = ``(y, x)`` in scan pixels, like napari and numpy.
Direct Electron "FreeScan" coordinate CSVs (``*_scan_coordinates.csv``) store **(x, y)**, i.e.
(column, row), relative to the scan ROI's corner; :func:`read_scan_csv` swaps them. Proof on the
example ``ROI_Random_Scan``: its info file says scan size X=16, Y=32 and ROI offset (3, 3), size
X=12 × Y=29; the CSV's first column spans 0–11 (12 values = ROI size X) and the second 0–28
(29 values = ROI size Y), so the columns are (x, y) relative to the ROI offset. Place them in the
full scan with ``origin = info["roi_offset"]``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def rasterise(
    coords,
    values,
    shape: tuple[int, int] | None = None,
    *,
    origin: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Put scattered measurements on a pixel grid (nearest pixel, duplicates averaged).

    Parameters
    ----------
    coords : array-like (N, 2)
        Probe positions ``(row, col)`` in pixels (float or int); each goes to its nearest pixel.
    values : array-like (N,)
        The measured value at each position (any unit, e.g. detector counts).
    shape : (H, W), optional
        Size of the grid in pixels. Default: just large enough for the largest position.
    origin : (row, col), optional
        Grid pixel of the position ``(0, 0)``, e.g. the scan ROI offset when ``coords`` are
        relative to the ROI. Default ``(0, 0)``.

    Returns
    -------
    values : ndarray float64 (H, W)
        The (mean) measured value at measured pixels, 0 elsewhere (float64: counts above 2**24
        and float64 values stay exact).
    mask : ndarray bool (H, W)
        True where at least one measurement fell.

    Raises
    ------
    ValueError
        For NaN/inf positions or values, positions left of / above the grid (negative pixels),
        positions outside ``shape``, mismatched lengths, or no positions at all.
    """
    pos = np.asarray(coords, dtype=float)
    vals = np.asarray(values, dtype=float).ravel()
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(
            f"Scan positions must be an (N, 2) array of (row, col) pixels; got shape {pos.shape}."
        )
    if len(pos) == 0:
        raise ValueError("There are no scan positions: nothing was measured.")
    if len(vals) != len(pos):
        raise ValueError(
            f"There are {len(pos)} scan positions but {len(vals)} values; "
            "each position needs exactly one measured value."
        )
    if not np.isfinite(pos).all():
        raise ValueError(
            f"{int((~np.isfinite(pos)).any(axis=1).sum())} scan positions are NaN or "
            "infinite; remove them first."
        )
    if not np.isfinite(vals).all():
        raise ValueError(
            f"{int((~np.isfinite(vals)).sum())} measured values are NaN or infinite; "
            "remove those positions first."
        )
    off = np.zeros(2) if origin is None else np.asarray(origin, dtype=float).reshape(2)
    pix = np.rint(pos + off).astype(np.int64)
    if (pix < 0).any():
        bad = pos[(pix < 0).any(axis=1)][0]
        raise ValueError(
            f"Scan position {tuple(float(x) for x in bad)} falls at a negative pixel; "
            "positions must be (row, col) ≥ 0 (set `origin` if they are relative to a region "
            "of interest)."
        )
    need = tuple(int(n) for n in pix.max(axis=0) + 1)
    grid = tuple(int(n) for n in (need if shape is None else shape))
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"The grid shape must be two positive sizes (H, W); got {grid}.")
    if need[0] > grid[0] or need[1] > grid[1]:
        raise ValueError(
            f"Scan positions reach pixel (row {need[0] - 1}, col {need[1] - 1}), outside "
            f"the {grid[0]}×{grid[1]} grid; check the grid size and the (x, y) order."
        )
    flat = np.ravel_multi_index((pix[:, 0], pix[:, 1]), grid)
    total = np.bincount(flat, weights=vals, minlength=grid[0] * grid[1])
    count = np.bincount(flat, minlength=grid[0] * grid[1])
    mask = count > 0
    out = np.zeros(total.shape, np.float64)
    out[mask] = total[mask] / count[mask]
    return out.reshape(grid), mask.reshape(grid)


def read_scan_csv(path, *, order: str = "xy") -> np.ndarray:
    """Read a scan-position file with two integer columns, in acquisition order.

    Parameters
    ----------
    path : str or Path
        Text file, one position per line, two columns separated by a comma, semicolon, tab or
        spaces; an optional header line is skipped.
    order : {"xy", "yx"}
        Column order in the file. Direct Electron ``*_scan_coordinates.csv`` files are ``"xy"``
        (column, row) relative to the scan ROI offset (see the module docstring).

    Returns
    -------
    coords : ndarray int (N, 2)
        ``(row, col)`` scan pixels, in file (= acquisition) order.

    Raises
    ------
    ValueError
        When the file is missing, has no positions, not exactly two columns, or non-integers.
    """
    if order not in ("xy", "yx"):
        raise ValueError(f"order must be 'xy' or 'yx', not {order!r}.")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Could not read scan positions: {p} does not exist.")
    rows: list[list[float]] = []
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        parts = [s for s in re.split(r"[,;\s]+", line.strip()) if s]
        if not parts:
            continue
        try:
            nums = [float(s) for s in parts]
        except ValueError:
            if not rows:  # a header line
                continue
            raise ValueError(f"{p.name} line {n} is not two numbers: {line.strip()!r}.") from None
        if len(nums) != 2:
            raise ValueError(
                f"{p.name} line {n} has {len(nums)} columns; a scan-position file "
                "has exactly two (x, y)."
            )
        rows.append(nums)
    if not rows:
        raise ValueError(f"{p.name} holds no scan positions.")
    arr = np.asarray(rows)
    if not np.all(arr == np.round(arr)):
        raise ValueError(f"{p.name} holds non-integer positions; expected integer scan pixels.")
    arr = arr.astype(np.int64)
    return arr[:, ::-1].copy() if order == "xy" else arr


def read_scan_info(path) -> dict:
    """Scan geometry from a Direct Electron ``*_info.txt`` (``key = value`` lines).

    Returns
    -------
    dict
        ``scan_shape`` (rows, cols) = (Scan Size Y, X); ``roi_offset`` (row, col) and
        ``roi_shape`` (rows, cols) when an ROI is enabled, else ``(0, 0)`` and ``scan_shape``;
        ``n_points`` (Scan - Points) or None; ``raw`` all key/value strings.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Could not read the scan info: {p} does not exist.")
    raw = {}
    for line in p.read_text(errors="replace").splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            raw[key.strip()] = value.strip()

    def num(key):
        try:
            return int(float(raw[key]))
        except (KeyError, ValueError):
            return None

    scan = (num("Scan - Size Y"), num("Scan - Size X"))
    if None in scan:
        raise ValueError(
            f"{p.name} does not give 'Scan - Size X/Y'; is it a Direct Electron info file?"
        )
    roi_on = raw.get("Scan - ROI Enable", "").lower() == "enable"
    offset = (num("Scan - ROI Offset Y"), num("Scan - ROI Offset X"))
    roi = (num("Scan - ROI Size Y"), num("Scan - ROI Size X"))
    if not roi_on or None in offset or None in roi:
        offset, roi = (0, 0), scan
    return {
        "scan_shape": scan,
        "roi_offset": offset,
        "roi_shape": roi,
        "n_points": num("Scan - Points"),
        "raw": raw,
    }


SHAPE_KEY = "scan_shape"  # a JSON sidecar's [rows, cols] of a sparse scan's CSV


def declared_scan_shape(path) -> tuple[tuple[int, int] | None, str]:
    """The scan grid a sparse scan's CSV declares beside it, and the file that says so.

    Parameters
    ----------
    path : str or Path
        The CSV of ``x, y, value`` rows.

    Returns
    -------
    shape : (rows, cols) or None
        From a JSON sidecar (``scan.csv.json`` or ``scan.json``) holding ``"scan_shape":
        [rows, cols]``, else a Direct Electron ``scan_info.txt`` (``Scan - Size X/Y``); ``None``
        when neither is there.
    source : str
        The sidecar's file name ('' without one).

    Raises
    ------
    ValueError
        When a sidecar is there but its size cannot be read.
    """
    import json

    p = Path(path)
    for side in (p.with_name(p.name + ".json"), p.with_suffix(".json")):
        if not side.is_file():
            continue
        try:
            record = json.loads(side.read_text(errors="replace"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{side.name} beside {p.name} is not JSON ({err}).") from None
        shape = record.get(SHAPE_KEY) if isinstance(record, dict) else None
        if shape is None:
            continue
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(n, int) and n > 0 for n in shape)
        ):
            raise ValueError(
                f"{side.name} gives {SHAPE_KEY} = {shape!r}; it must be [rows, cols] in pixels."
            )
        return (shape[0], shape[1]), side.name
    info = p.with_name(p.stem + INFO_SUFFIX)
    if info.is_file():
        return read_scan_info(info)["scan_shape"], info.name
    return None, ""


def undeclared_grid_note(metadata, shape) -> str:
    """The :func:`inferred_grid_sentence` for a scan our reader read from a CSV that declares
    no scan size, else ''.

    Parameters
    ----------
    metadata : dict or None
        The layer's metadata from :func:`napari_microml.io.reader.read_file`.
    shape : (rows, cols)
        The scan's grid.

    Returns
    -------
    str
    """
    meta = metadata or {}
    source = str((meta.get("napari_microml") or {}).get("source_file") or "")
    found = ((meta.get("original") or {}).get("original_metadata") or {}).get("grid_declared_in")
    if not source.lower().endswith(".csv") or found is None or found:
        return ""
    return inferred_grid_sentence(shape, name=Path(source).name)


def inferred_grid_sentence(shape, *, name: str) -> str:
    """The sentence for a sparse scan whose grid was inferred from its furthest position.

    Parameters
    ----------
    shape : (rows, cols)
        The inferred grid.
    name : str
        The CSV's file name.

    Returns
    -------
    str
        "The grid (… px) is as large as the furthest measured position: …".
    """
    rows, cols = (int(n) for n in shape)
    return (
        f"The grid ({rows} × {cols} px) is as large as the furthest measured position: {name} "
        f"does not declare the scan's size, so rows or columns beyond it are missing; a "
        f'{name}.json beside it holding {{"{SHAPE_KEY}": [rows, cols]}} sets it.'
    )


def values_from_movie(movie) -> np.ndarray:
    """One value per scan position from a 4D-STEM movie: the sum of each frame.

    A virtual "total sum" detector: frame ``t`` is the diffraction pattern recorded at scan
    position ``t``.

    Parameters
    ----------
    movie : array-like (T, h, w)
        numpy or dask array of frames (detector counts).

    Returns
    -------
    ndarray float64 (T,)
        Sum of each frame, in counts.
    """
    arr = movie
    if arr.__class__.__module__.startswith("dask"):
        arr = arr.compute()
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"A scan movie must be (positions, h, w) frames; got shape {arr.shape}.")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"The scan movie must contain numbers, not {arr.dtype} values.")
    return arr.reshape(arr.shape[0], -1).sum(axis=1, dtype=np.float64)


def sparse_from_files(coords_csv, movie, info=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A sparse image from a Direct Electron random scan: positions CSV + movie (+ info file).

    Parameters
    ----------
    coords_csv : path of the ``*_scan_coordinates.csv`` (x, y per line, acquisition order)
    movie : path of the movie (.mrc etc., read with :func:`napari_microml.io.reader.read_file`)
        or an array (T, h, w)
    info : path of the ``*_info.txt``, optional; gives the full scan size and ROI offset.
        Without it the grid is the bounding box of the positions.

    Returns
    -------
    values : float64 (H, W), mask : bool (H, W), info : dict (see :func:`read_scan_info`)
    """
    coords = read_scan_csv(coords_csv)
    if isinstance(movie, (str, Path)):
        from napari_microml.io.reader import read_file

        movie = read_file(movie)[0][0]
    signal = values_from_movie(movie)
    if len(signal) != len(coords):
        raise ValueError(
            f"The movie has {len(signal)} frames but the position file has {len(coords)} "
            "positions; they must match one to one."
        )
    meta = read_scan_info(info) if info is not None else {"scan_shape": None, "roi_offset": (0, 0)}
    values, mask = rasterise(coords, signal, meta["scan_shape"], origin=meta["roi_offset"])
    return values, mask, meta


def check_mask(shape, mask) -> np.ndarray:
    """The measured-pixel mask for values of ``shape`` (cheap: no pass over the values).

    ``mask`` is non-zero (and not NaN) where a pixel was measured; a 2D mask serves every frame
    of a (T, H, W) stack. Returns a bool array of ``shape``; raises ValueError when the sizes
    differ, nothing or everything is measured in a frame.
    """
    shape = tuple(int(n) for n in shape)
    m = np.asarray(mask)
    if m.shape != shape and not (len(shape) == 3 and m.shape == shape[1:]):
        raise ValueError(
            f"The mask is {'×'.join(map(str, m.shape))} pixels but the sparse image is "
            f"{'×'.join(map(str, shape))}; they must have the same size."
        )
    measured = (m != 0) & ~np.isnan(m) if m.dtype.kind == "f" else m != 0
    frames = measured.reshape((-1,) + measured.shape[-2:])
    for t, frame in enumerate(frames):
        where = f" in frame {t}" if len(frames) > 1 else ""
        if not frame.any():
            raise ValueError(
                f"The mask marks no measured pixel{where}: there is nothing to complete from."
            )
        if frame.all():
            raise ValueError(f"Every pixel is measured{where}: there is nothing to complete.")
    return np.broadcast_to(measured, shape).copy()


def weights_sentence(mask, *, name: str) -> str:
    """A sentence when ``mask`` holds more than two levels (weights, a blurred scan trace):
    every non-zero pixel is read as measured, the faint ones too; ``""`` for a 0/1 mask.

    Parameters
    ----------
    mask : array-like
        The mask as given (numbers; NaN = not measured).
    name : str
        What to call it in the sentence (a file or layer name).

    Returns
    -------
    str
        "<name> holds N levels from … to …, not two: …", or "".
    """
    m = np.asarray(mask)
    levels = np.unique(m[np.isfinite(m)]) if m.dtype.kind == "f" else np.unique(m)
    if levels.size <= 2:
        return ""
    measured = np.isfinite(m) & (m != 0) if m.dtype.kind == "f" else m != 0
    return (
        f"{name} holds {levels.size} levels from {levels.min():.4g} to {levels.max():.4g}, not "
        f"two: its {int(measured.sum())} non-zero pixels ({100 * measured.mean():.1f} %) are "
        "taken as measured, the faint ones too; threshold the mask first where they were not."
    )


def check_sparse(values, mask) -> tuple[np.ndarray, np.ndarray]:
    """Check a sparse image and its mask before completion; return them as float32 / bool.

    Parameters
    ----------
    values : array-like (H, W) or (T, H, W)
        Measured values; pixels outside the mask are ignored (0 or NaN are fine).
    mask : array-like (H, W) or the same shape as ``values``
        Non-zero where a pixel was measured. A 2D mask is used for every frame of a stack.

    Returns
    -------
    values : ndarray float32 (float64 for float64 input and integers wider than 16 bits, so
    measured values stay exact), mask : ndarray bool (same shape as ``values``)

    Raises
    ------
    ValueError
        For RGB or wrong-dimensional input, a mask whose shape differs from the image, a mask
        with no measured pixel (in any frame), a mask that measures every pixel of a frame
        (nothing to complete), or NaN/inf values at measured pixels.
    """
    from napari_microml.completion.complete import check_scan, output_dtype
    from napari_microml.runtime.validate import as_image_stack

    arr = np.asarray(values)
    as_image_stack(np.nan_to_num(arr) if arr.dtype.kind == "f" else arr, what="sparse image")
    dtype = output_dtype(arr.dtype) if arr.dtype.kind in "biuf" else np.float32
    arr = arr.astype(dtype, copy=False)
    m = check_mask(arr.shape, mask)
    v3, m3, _ = check_scan(arr, m)  # the core's rules: a measured pixel per frame, not all, finite
    return v3.reshape(arr.shape).astype(dtype, copy=False), m3.reshape(arr.shape)


COORDS_SUFFIX = "_scan_coordinates.csv"
INFO_SUFFIX = "_info.txt"


def companion_files(movie_path) -> tuple[Path, Path | None] | None:
    """The Direct Electron random-scan files that belong to a movie, or None.

    ``ROI_Random_Scan_movie.mrc`` belongs with ``ROI_Random_Scan_scan_coordinates.csv`` (needed)
    and ``ROI_Random_Scan_info.txt`` (optional: full scan size and ROI offset); the movie's stem
    minus a trailing ``_movie`` names them.
    """
    p = Path(movie_path)
    stem = p.stem[: -len("_movie")] if p.stem.lower().endswith("_movie") else p.stem
    coords = p.with_name(stem + COORDS_SUFFIX)
    if not coords.is_file():
        return None
    info = p.with_name(stem + INFO_SUFFIX)
    return coords, (info if info.is_file() else None)


MOVIE_SUFFIXES = (".mrc", ".tif", ".tiff", ".hspy", ".npy")


def movie_for_coordinates(coords_path) -> Path | None:
    """The movie a Direct Electron ``*_scan_coordinates.csv`` was recorded with
    (``<stem>_movie.mrc``, or ``<stem>.mrc``), or None when it is not beside it."""
    p = Path(coords_path)
    if not p.name.lower().endswith(COORDS_SUFFIX):
        return None
    stem = p.name[: -len(COORDS_SUFFIX)]
    for name in (f"{stem}_movie", stem):
        for suffix in MOVIE_SUFFIXES:
            movie = p.with_name(name + suffix)
            if movie.is_file() and companion_files(movie) is not None:
                return movie
    return None


def coordinates_only_sentence(coords_path) -> str:
    """Why a scan-position file alone cannot be opened, and what to open instead."""
    p = Path(coords_path)
    stem = p.name[: -len(COORDS_SUFFIX)] if p.name.lower().endswith(COORDS_SUFFIX) else p.stem
    return (
        f"{p.name} holds only the scan positions (x, y), no measured values: open the movie "
        f"recorded with it ({stem}_movie.mrc, in the same folder); its frames give one value "
        "per position and this file places them."
    )


def random_scan_layers(movie_path, movie) -> list[tuple]:
    """napari layers for a random-position scan opened by its movie (File → Open).

    Returns three ``(data, kwargs, layer_type)`` tuples on the full scan grid: the sparse image
    (the per-frame sum at measured pixels, 0 elsewhere), its measured-pixel mask (Labels) and the
    scan positions as Points with the value in the ``intensity`` feature and the grid size in
    their metadata, so both input modes of the completer give the same grid. Empty when the
    movie has no companion position file (see :func:`companion_files`).
    """
    found = companion_files(movie_path)
    if found is None:
        return []
    coords_path, info_path = found
    coords = read_scan_csv(coords_path)
    signal = values_from_movie(movie)
    if len(signal) != len(coords):
        raise ValueError(
            f"{Path(movie_path).name} has {len(signal)} frames but {coords_path.name} has "
            f"{len(coords)} positions; they must match one to one."
        )
    meta = (
        read_scan_info(info_path)
        if info_path is not None
        else {"scan_shape": None, "roi_offset": (0, 0)}
    )
    values, mask = rasterise(coords, signal, meta["scan_shape"], origin=meta["roi_offset"])
    stem = coords_path.name[: -len(COORDS_SUFFIX)]
    scan = {
        "source_file": str(movie_path),
        "scan_coordinates": str(coords_path),
        "scan_info": str(info_path) if info_path else None,
        "scan_shape": tuple(values.shape),
        "roi_offset": tuple(np.asarray(meta["roi_offset"]).tolist()),
        "n_positions": int(len(coords)),
    }
    positions = coords + np.asarray(meta["roi_offset"])
    md = {"napari_microml": {**scan, "sparse_scan": True}}
    return [
        (values, {"name": f"{stem} sparse", "metadata": md, "colormap": "gray"}, "image"),
        (mask.astype(np.uint8), {"name": f"{stem} mask", "metadata": md, "opacity": 0.5}, "labels"),
        (
            positions.astype(np.float64),
            {
                "name": f"{stem} scan points",
                "metadata": md,
                "size": 1.0,
                "features": {"intensity": signal},
                "visible": False,
            },
            "points",
        ),
    ]
