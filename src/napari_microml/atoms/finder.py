"""Find atomic columns: U-Net probability map → local maxima → batched sub-pixel refinement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_microml.atoms.refine import (
    METHODS,
    flatten_background,
    refine_positions,
    refine_positions_iter,
)
from napari_microml.runtime.contrast import check_contrast, decide
from napari_microml.runtime.level import Levelling, check_scan, prepare_frame
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.spacing import resample, to_original, zoom_for, zoom_to
from napari_microml.runtime.tiling import TILE, tile_batch, tiled_predict
from napari_microml.runtime.validate import (
    as_scaled_stack,
    check_number,
    check_pixel_size,
    check_positions,
    check_probability,
    check_tile,
    fill_nonfinite,
    robust_normalize,
)
from napari_microml.runtime.workers import drain, progress

if TYPE_CHECKING:
    import pandas as pd

FEATURES = ("score", "intensity", "sigma", "position_std", "fit_ok")
# what a model was trained on: robust scaling, or that after flattening the background
INPUTS = ("plain", "flatten")
# flatten_background radius (px of the network grid): a minimum over 35 px, smoothed
FLATTEN_RADIUS = 8
# rescale="auto" also resamples a lattice whose period exceeds this (px): at native scale the
# network misses wide columns there, noisy or smooth (benchmarks/RESULTS.md, "rescale")
NOISY_PERIOD = 22.0
# the single-atom model knows atoms as its training images show them: 15 nm over 512 px
SINGLE_ATOMS_PIXEL_NM = 15.0 / 512
# two peaks closer than this fraction of the local column spacing are one column: no projected
# lattice has a second column that close (a resolved dumbbell *is* the local spacing)
MERGE_FRACTION = 0.5
# nearest-neighbour distances count as a lattice when their middle half lies within this
# fraction of the median (single atoms on a support scatter far wider)
LATTICE_SPREAD = 0.25
# model="auto": the lattice model unless neither its columns nor the image show a lattice
# (atoms.choose), then the single-atom model
AUTO = "auto"


def network_input(image: np.ndarray, kind: str = "plain") -> np.ndarray:
    """Return what an atom network sees: the frame scaled so 0.5 / 99.8 percentiles map to 0 / 1.

    For ``kind="flatten"`` the slowly varying background (support thickness, gradients) is
    subtracted first (:func:`~napari_microml.atoms.refine.flatten_background`), so faint columns
    on a bright, uneven support keep their contrast.

    Parameters
    ----------
    image : (H, W) array
        The frame with bright columns, on the network's grid.
    kind : {'plain', 'flatten'}
        The input the model was trained on.

    Returns
    -------
    (H, W) float array
    """
    if kind not in INPUTS:
        raise ValueError(f"Unknown network input {kind!r}; choose one of {', '.join(INPUTS)}.")
    # first: flattening then works on 0–1 numbers whatever the units
    image = robust_normalize(image)
    return (
        robust_normalize(flatten_background(image, FLATTEN_RADIUS)) if kind == "flatten" else image
    )


def input_kind(net, info: dict) -> str:
    """Return the input a loaded atom model expects.

    That is its recorded ``meta["input"]``, else the module's ``input_kind`` attribute (modules
    passed directly), else "plain".
    """
    return str((info.get("meta") or {}).get("input") or getattr(net, "input_kind", "plain"))


@dataclass
class AtomsResult:
    """Columns found in an image or stack.

    positions : (N, 2) float64 (row, col) in pixels, sub-pixel.
    features : pandas.DataFrame with score, intensity, sigma, position_std (px), fit_ok and,
        for stacks, frame.
    probability : (H, W) or (T, H, W) float32 network output.
    """

    positions: np.ndarray
    features: pd.DataFrame
    probability: np.ndarray
    model: dict
    device: str
    parameters: dict
    pixel_size: float | None = None
    is_stack: bool = False
    provenance: dict = field(default_factory=dict)

    @property
    def frames(self):
        """Frame index of every column for a stack, else None."""
        return self.features["frame"].to_numpy() if self.is_stack else None

    @property
    def positions_nm(self):
        """Positions in nm (needs ``pixel_size``)."""
        if self.pixel_size is None:
            raise ValueError("No pixel_size was given, so positions are only known in pixels.")
        return self.positions * self.pixel_size


def local_maxima(
    prob: np.ndarray, *, threshold: float, min_distance: int
) -> tuple[np.ndarray, np.ndarray]:
    """Find the peaks of a probability map, sub-pixel by a 3×3 parabola, and their scores.

    Parameters
    ----------
    prob : numpy.ndarray, (H, W)
        Column probability map (0–1), as the atom finder's network gives it.
    threshold : float
        A peak must be above this probability.
    min_distance : int
        A peak is the maximum of the (2·min_distance + 1)² pixels around it; a flat top
        gives one peak.

    Returns
    -------
    positions : numpy.ndarray, (N, 2) float64
        (row, col) of each peak in pixels, each within ±0.5 px of its pixel.
    scores : numpy.ndarray, (N,) float32
        The probability at each peak's pixel.
    """
    from scipy import ndimage as ndi

    size = 2 * min_distance + 1
    is_max = (prob >= ndi.maximum_filter(prob, size=size, mode="nearest")) & (prob > threshold)
    labels, n = ndi.label(is_max)  # a flat top (tie) gives one peak, its first pixel
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0)
    peaks = np.array([(sl[0].start, sl[1].start) for sl in ndi.find_objects(labels)], int)
    peaks = peaks[labels[peaks[:, 0], peaks[:, 1]] > 0]
    if len(peaks) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    h, w = prob.shape
    r, c = peaks[:, 0], peaks[:, 1]
    p = np.pad(prob, 1, mode="edge")
    centre = p[r + 1, c + 1]
    sub = []
    for lo, hi in ((p[r, c + 1], p[r + 2, c + 1]), (p[r + 1, c], p[r + 1, c + 2])):
        den = lo - 2 * centre + hi
        sub.append(
            np.where(den < 0, 0.5 * (lo - hi) / np.where(den < 0, den, -1), 0.0).clip(-0.5, 0.5)
        )
    pos = np.column_stack([r + sub[0], c + sub[1]]).astype(np.float64)
    return pos, centre.astype(np.float32)


def single_atoms_zoom(model, pixel_size: float, shape) -> float:
    """Resampling that brings a calibrated frame to the single-atom model's training pixel size.

    Parameters
    ----------
    model : str or other
        The model asked for; only the shipped single-atom model has a known pixel size.
    pixel_size : float
        The frame's nm per pixel.
    shape : (int, int)
        The frame's size (upsampling stops at 8192 px a side).

    Returns
    -------
    float
        ``pixel_size / SINGLE_ATOMS_PIXEL_NM`` when that is more than 10 % from 1 and within
        1/8–8, else 1.0.
    """
    from napari_microml.atoms.choose import SINGLE_ATOMS_MODEL

    zoom = pixel_size / SINGLE_ATOMS_PIXEL_NM
    if not (isinstance(model, str) and model == SINGLE_ATOMS_MODEL) or abs(zoom - 1) <= 0.1:
        return 1.0
    return min(zoom, 8192 / max(shape)) if 0.125 <= zoom <= 8 else 1.0


def lattice_spacing(positions: np.ndarray) -> float | None:
    """Return the median nearest-neighbour distance when ``positions`` form a lattice, else None.

    Parameters
    ----------
    positions : (N, 2) array
        Column positions (row, col) in pixels.

    Returns
    -------
    float or None
        The spacing in pixels, or None for fewer than 8 columns or scattered ones (the middle
        half of the nearest-neighbour distances spread wider than ``LATTICE_SPREAD`` of it).
    """
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, float).reshape(-1, 2)
    if len(positions) < 8:
        return None
    d, _ = cKDTree(positions).query(positions, k=2)
    q1, med, q3 = np.percentile(d[:, 1], [25, 50, 75])
    return float(med) if med > 0 and (q3 - q1) <= LATTICE_SPREAD * med else None


def merge_close(positions: np.ndarray, scores: np.ndarray, *, neighbours: int = 12) -> np.ndarray:
    """Return a keep mask that drops the weaker of two peaks on one column.

    In a lattice (:func:`lattice_spacing`), a peak closer than ``MERGE_FRACTION`` of the local
    spacing (the upper quartile of the nearest-neighbour distances of its ``neighbours``
    nearest peaks beyond its own nearest) to a higher-scored peak is dropped. The rule is
    relative to the lattice's own spacing, so a resolved dumbbell lattice (every column's
    neighbour at the same short distance) is never merged; scattered single atoms are left
    alone.

    Parameters
    ----------
    positions : (N, 2) array
        Peak positions (row, col) in pixels.
    scores : (N,) array
        Network scores; the higher one of a pair is kept.
    neighbours : int
        How many nearby peaks set the local spacing.

    Returns
    -------
    (N,) bool array
    """
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, float).reshape(-1, 2)
    keep = np.ones(len(positions), bool)
    if lattice_spacing(positions) is None:
        return keep
    tree = cKDTree(positions)
    d, idx = tree.query(positions, k=min(neighbours + 2, len(positions)))
    # the upper quartile of the nearest-neighbour distances around each peak (leaving out the
    # peak and its partner): extra peaks only ever shorten them
    local = np.percentile(d[idx[:, 2:], 1], 75, axis=1)
    limit = MERGE_FRACTION * local
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    rank = np.empty(len(order), int)
    rank[order] = np.arange(len(order))
    for i in order:
        if not keep[i] or d[i, 1] >= limit[i]:
            continue  # only peaks with a close neighbour need a look
        close = np.asarray(tree.query_ball_point(positions[i], limit[i]), int)
        keep[close[rank[close] > rank[i]]] = False  # only weaker ones
    return keep


def find_atoms_iter(
    image,
    *,
    model=AUTO,
    threshold: float = 0.5,
    refine: str = "gaussian",
    device="auto",
    pixel_size: float | None = None,
    contrast: str = "auto",
    min_distance: int = 2,
    tile: int = TILE,
    rescale="auto",
    input_name: str | None = None,
    scan: str = "auto",
):
    """Find atomic columns like :func:`find_atoms`, as a generator that reports progress.

    It takes the same parameters as :func:`find_atoms`. Stopping the generator between steps
    cancels the run.

    Yields
    ------
    tuple
        ``("progress", done, total, message)`` after loading the model, after every network
        tile and every chunk of fitted columns, frame by frame for a stack.

    Returns
    -------
    AtomsResult
        The generator's return value, as :func:`find_atoms` returns it.
    """
    if isinstance(model, str) and model == AUTO:
        # first statement: locals() holds exactly the keyword parameters
        options = {k: v for k, v in locals().items() if k not in ("image", "model")}
        return (yield from _find_atoms_auto_iter(image, options))
    import pandas as pd

    from napari_microml.nets.registry import load_model, model_provenance
    from napari_microml.runtime.device import describe_device, resolve_device

    if refine not in METHODS:
        raise ValueError(f"Unknown refinement {refine!r}; choose one of {', '.join(METHODS)}.")
    check_contrast(contrast)
    threshold = check_probability(threshold)
    pixel_size = check_pixel_size(pixel_size)
    min_distance = check_number(min_distance, "min_distance", low=1, integer=True, unit="pixels")
    tile = check_tile(tile)
    scan = check_scan(scan)
    # a big frame's preparation takes seconds: each stage says so and is a cancel point
    yield progress(0, 1, "reading the image")
    # 0–1 in float64 first: the same numbers (and columns) whatever the image's units
    scaled = as_scaled_stack(image, what="image")
    stack, is_stack = scaled.stack, scaled.is_stack
    levelled = Levelling()
    yield progress(0, 1, "checking the scan for outliers and uneven line levels")
    for frame in stack:  # a fresh array: repaired and levelled in place
        levelled |= prepare_frame(frame, scan=scan)
    yield progress(0, 1, "measuring the column spacing")
    zoom, spacing = zoom_for(fill_nonfinite(stack[0]), rescale, noisy_high=NOISY_PERIOD)
    from napari_microml.atoms.choose import SINGLE_ATOMS_MODEL

    # the single-atom model knows atoms at its training pixel size, whatever the image repeats
    single = isinstance(model, str) and model == SINGLE_ATOMS_MODEL
    if rescale == "auto" and (spacing is None or single) and pixel_size is not None:
        zoom = single_atoms_zoom(model, pixel_size, stack.shape[-2:])
    if levelled.applied:
        yield progress(0, 1, str(levelled.describe()))
    yield progress(0, 1, "loading the model")  # a cancel point after measuring the lattice
    dev = resolve_device(device)
    net, info = load_model("atoms", model, dev)
    import torch

    from napari_microml.nets.unet import batch_predictor

    predict = batch_predictor(net, dev, torch.sigmoid)
    kind = input_kind(net, info)
    # decided on what the network sees: a 3 px lattice is a blur until resampled
    choice = decide(
        resample(fill_nonfinite(stack[0]), zoom), contrast, period=spacing and spacing * zoom
    )
    n_frames = len(stack)
    probs, rows = [], []
    for t, frame in enumerate(stack):
        frame = fill_nonfinite(frame)
        if choice.contrast == "dark":
            frame = frame.max() - frame
        yield progress(t, n_frames, f"frame {t + 1}/{n_frames}: network")  # a cancel point
        gen = tiled_predict(
            predict,
            network_input(resample(frame, zoom), kind)[None],
            out_channels=1,
            tile=tile,
            batch_size=tile_batch(tile, dev),
            multiple=getattr(net, "multiple", 8),
        )
        while True:
            try:
                done, total = next(gen)
            except StopIteration as stop:
                prob = stop.value[0]
                break
            # one step more than the tiles: the bar is not full while the peaks are found
            yield progress(
                t * (total + 1) + done,
                n_frames * (total + 1),
                f"frame {t + 1}/{n_frames}: tile {done}/{total}",
            )
        yield progress(
            t * (total + 1) + total,
            n_frames * (total + 1),
            f"frame {t + 1}/{n_frames}: finding the column peaks",
        )
        pos, score = local_maxima(prob, threshold=threshold, min_distance=min_distance)
        if zoom != 1.0:  # peaks found on the resampled grid; refined on the original pixels
            pos = np.clip(
                to_original(pos, zoom), -0.5, np.array(frame.shape) - 0.5
            )  # a border peak stays on the image
            prob = zoom_to(prob, frame.shape).astype(np.float32)
        # a weak second peak beside a column would cut the column's fit window in half
        first = merge_close(pos, score)
        pos, score = pos[first], score[first]
        fits = refine_positions_iter(
            frame, pos, method=refine, max_radius=int(np.clip(10 / zoom, 10, 24))
        )  # wide columns: wide windows
        while True:
            try:
                done, total, text = next(fits)[1:]
            except StopIteration as stop:
                pos, feats = stop.value
                break
            yield progress(t * total + done, n_frames * total, f"frame {t + 1}/{n_frames}: {text}")
        h, w = frame.shape
        keep = (
            (pos[:, 0] >= -0.5)
            & (pos[:, 0] <= h - 0.5)
            & (pos[:, 1] >= -0.5)
            & (pos[:, 1] <= w - 0.5)
        )
        keep[keep] = merge_close(pos[keep], score[keep])  # two fits that converged on one column
        feats["intensity"] = feats["intensity"] * scaled.scale  # back to the image's units
        df = pd.DataFrame(
            {
                "row": pos[keep, 0],
                "col": pos[keep, 1],
                "score": score[keep],
                **{k: np.asarray(v)[keep] for k, v in feats.items()},
            }
        )
        if is_stack:
            df.insert(0, "frame", t)
        rows.append(df)
        probs.append(prob.astype(np.float32))
    table = pd.concat(rows, ignore_index=True)
    positions = table[["row", "col"]].to_numpy(np.float64)
    features = table.drop(columns=["row", "col"])
    params = dict(
        model=str(model) if not hasattr(model, "state_dict") else "custom",
        threshold=threshold,
        refine=refine,
        contrast=choice.contrast,
        contrast_choice=choice.record(),
        min_distance=min_distance,
        pixel_size=pixel_size,
        tile=tile,
        rescale=rescale if isinstance(rescale, str) or rescale is None else float(rescale),
        zoom=round(zoom, 4),
        estimated_period_px=spacing,
        network_input=kind,
        levelling=levelled.describe(),
        **({"scan": scan} if scan != "auto" else {}),  # an electron run's record as before
    )
    label = describe_device(dev)
    model_info = model_provenance(info)
    return AtomsResult(
        positions=positions,
        features=features,
        probability=np.stack(probs) if is_stack else probs[0],
        model=model_info,
        device=label,
        parameters=params,
        pixel_size=pixel_size,
        is_stack=is_stack,
        provenance=make_provenance(
            "atom_finder", parameters=params, model=model_info, device=label, input_name=input_name
        ),
    )


def _find_atoms_auto_iter(image, options: dict):
    """``model="auto"``: the lattice model, then the single-atom model only where no lattice shows.

    A 2D image's lattice-model pass is the result when it is kept; a stack is judged on its first
    frame, then the chosen model runs on every frame.
    """
    from napari_microml.atoms.choose import LATTICE_MODEL, choose_atoms_model, image_period
    from napari_microml.runtime.workers import relabel

    scaled = as_scaled_stack(image, what="image")
    first = fill_nonfinite(scaled.stack[0])
    if scaled.is_stack:
        probe = yield from relabel(
            find_atoms_iter(first, model=LATTICE_MODEL, **options), "choosing the model: "
        )
    else:
        probe = yield from find_atoms_iter(image, model=LATTICE_MODEL, **options)
    period = probe.parameters["estimated_period_px"]
    if options["rescale"] not in ("auto", "always"):  # only those measured the period
        period = image_period(first)
    choice = choose_atoms_model(
        positions=probe.positions,
        period=period,
        pixel_size=options.get("pixel_size"),
        shape=first.shape,
    )
    if choice.chosen == LATTICE_MODEL and not scaled.is_stack:
        result = probe
    else:
        yield progress(0, 1, f"{choice.reason}: running {choice.chosen}")  # a cancel point
        result = yield from find_atoms_iter(image, model=choice.chosen, **options)
    result.parameters = {**result.parameters, "model": AUTO, "model_choice": choice.record()}
    result.provenance = make_provenance(
        "atom_finder",
        parameters=result.parameters,
        model=result.model,
        device=result.device,
        input_name=options.get("input_name"),
    )
    return result


def find_atoms(
    image,
    *,
    model=AUTO,
    threshold: float = 0.5,
    refine: str = "gaussian",
    device="auto",
    pixel_size: float | None = None,
    contrast: str = "auto",
    min_distance: int = 2,
    tile: int = TILE,
    rescale="auto",
    input_name: str | None = None,
    scan: str = "auto",
) -> AtomsResult:
    """Find every atomic column in a 2D image or a (T, H, W) stack.

    Parameters
    ----------
    image : array (H, W) or (T, H, W)
        Any float-convertible grey image (HAADF, ADF, STM, ABF, BF).
    model : str, path or torch.nn.Module
        A shipped or fine-tuned atom-finder model name (``'default'``: lattices;
        ``'pt-single-atoms'``: isolated atoms on an amorphous support), a ``.pt`` file, a
        network, or ``'auto'``: the lattice model, re-run with ``'pt-single-atoms'`` only when
        neither its columns nor the image show a lattice (the default;
        :mod:`napari_microml.atoms.choose`; a stack is judged on its first frame). The choice
        and its reason are in ``parameters['model_choice']``.
    threshold : float
        Minimum probability of a column peak (0–1).
    contrast : {'auto', 'bright', 'dark'}
        Bright columns (HAADF/ADF/STM) or dark ones (ABF/BF, inverted for the network).
        ``'auto'`` (default) decides from the first frame (the sign of the band-passed image's
        skew, :mod:`napari_microml.runtime.contrast`); the choice is in
        ``parameters['contrast']`` and ``parameters['contrast_choice']``.
    refine : {'gaussian', 'com', 'none'}
        Batched 2D-Gaussian least squares, intensity centre of mass, or the probability peak.
    device : {'auto', 'cuda', 'mps', 'cpu'}
    pixel_size : float, optional
        Pixel size in nm; enables :attr:`AtomsResult.positions_nm`. With ``rescale='auto'`` a
        frame without a lattice is run through the single-atom model at that model's training
        pixel size (:data:`SINGLE_ATOMS_PIXEL_NM`, 0.0293 nm).
    rescale : 'auto', 'always', 'off' or float
        The network was trained on column spacings of 5–30 px. ``'auto'`` (default) measures the
        lattice period (:func:`runtime.spacing.estimate_spacing`) and, only for a clearly periodic
        image whose period lies below 5 px or above 22 px (wide columns: the network misses
        many at native scale on real frames), runs the network on a copy resampled to a 14 px
        period; peaks are mapped back and refined on the original pixels. A number forces that
        resampling factor; ``'always'`` resamples any clearly periodic image to a 14 px period;
        ``'off'`` never resamples. The factor is in
        ``parameters['zoom']``.
    min_distance : int
        Minimum separation of two column peaks, in pixels of the network's grid (default 2).
    tile : int
        Largest tile edge in pixels for the network pass (default 512); bounds memory and sets
        how often a run can be cancelled.
    input_name : str, optional
        Name of the input (file or layer) recorded in ``provenance['input_layer']``.
    scan : {'auto', 'spm'}
        ``'auto'`` (default) levels a frame only where it shows a scanning-probe tilt, line
        offsets or streaks; ``'spm'``: the image is an STM/AFM scan (a layer read from an SPM
        file: :func:`napari_microml.runtime.level.scan_kind`), levelled with lower line
        thresholds and its 1/f scan-line noise smoothed (:func:`runtime.level.level_scan`).

    Returns
    -------
    AtomsResult
        Positions ``(N, 2)`` (row, col) in pixels (a stack's frame is in ``features['frame']``),
        per-column features, the probability map ``(H, W)`` or ``(T, H, W)``, ``parameters`` and
        ``provenance``.
    """
    return drain(
        find_atoms_iter(
            image,
            model=model,
            threshold=threshold,
            refine=refine,
            device=device,
            pixel_size=pixel_size,
            contrast=contrast,
            min_distance=min_distance,
            tile=tile,
            rescale=rescale,
            input_name=input_name,
            scan=scan,
        )
    )


def refine_points_iter(
    image, positions, *, frames=None, refine="gaussian", contrast="auto", scan="auto"
):
    """Re-refine a user-edited set of points (per frame for stacks); return (positions, features).

    ``contrast='auto'`` decides from the first frame's skew
    (:func:`napari_microml.runtime.contrast.decide`); ``scan`` as in :func:`find_atoms`, so
    the points are fitted on the frame the finder fitted on.
    """
    import pandas as pd

    check_contrast(contrast)
    scan = check_scan(scan)
    scaled = as_scaled_stack(image)
    stack = scaled.stack
    for frame in stack:  # fitted on the frame find_atoms fits on
        prepare_frame(frame, scan=scan)
    positions = np.asarray(positions, float)
    if frames is not None and positions.size:
        positions = np.column_stack([np.asarray(frames, float).ravel(), positions])
    positions, frames = check_positions(
        positions, stack.shape, n_frames=len(stack), is_stack=scaled.is_stack and frames is not None
    )
    out = np.empty_like(positions)
    cols = {k: np.full(len(positions), np.nan) for k in FEATURES[1:]}
    cols["fit_ok"] = np.zeros(len(positions), bool)
    for t in np.unique(frames):
        sel = frames == t
        frame = fill_nonfinite(stack[t])
        if contrast == "auto":
            contrast = decide(fill_nonfinite(stack[0]), "auto").contrast
        if contrast == "dark":
            frame = frame.max() - frame
        out[sel], f = refine_positions(frame, positions[sel], method=refine)
        f["intensity"] = f["intensity"] * scaled.scale
        for k, v in f.items():
            cols[k][sel] = v
        yield progress(int(t) + 1, len(stack), f"refined frame {int(t) + 1}")
    feats = pd.DataFrame(cols)
    return out, feats
