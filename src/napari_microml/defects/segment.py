"""Segment defects: multi-class U-Net → class probabilities → instances → a table per defect.

The shipped network has ``N_OUTPUTS + 1`` output planes: softmax class logits (0 = defect-free,
``i`` = ``CLASS_NAMES[i - 1]``) and one sigmoid plane of atom-column probability, which gives the
columns for the "distance to the nearest atom" column at no extra cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_microml.defects.classes import CLASS_NAMES, N_OUTPUTS
from napari_microml.defects.columns import column_check as check_columns
from napari_microml.defects.instances import instances, keep_instances
from napari_microml.defects.periodic import interstitial_check
from napari_microml.runtime.contrast import check_contrast, decide
from napari_microml.runtime.level import Levelling, prepare_frame
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.spacing import resample, to_original, to_resampled, zoom_for, zoom_to
from napari_microml.runtime.tiling import TILE
from napari_microml.runtime.units import too_coarse
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
from napari_microml.runtime.workers import drain, progress, relabel

COLUMNS = (
    "label",
    "class",
    "class_id",
    "row",
    "col",
    "area_px",
    "area_nm2",
    "confidence",
    "class_confidence",
    "source",
    "column_z",
    "nearest_atom_px",
    "nearest_atom_nm",
)


@dataclass
class DefectsResult:
    """Defects found in an image or a (T, H, W) stack.

    labels : (H, W) or (T, H, W) int32 instance labels, 0 = no defect; unique over a stack.
    class_names : list of the defect class names (``CLASS_NAMES``).
    table : pandas.DataFrame, one row per defect: label, class, class_id, frame (stacks only),
        row, col (px, probability-weighted centroid), area_px, area_nm2 (NaN without pixel size),
        confidence (0–1, never below ``threshold``: for a network defect the mean defect
        probability 1 - p(defect-free) over the instance; for a bright dopant the column check
        added, :func:`napari_microml.defects.columns.rescue_confidence` of its column's
        intensity z-score), class_confidence (mean probability of the assigned class over the
        instance, 0–1; low where two classes share the pixels), source ('network' or 'column
        check': which evidence found the defect), column_z (the column's intensity z-score
        among its sublattice for a column-check defect, NaN otherwise), nearest_atom_px,
        nearest_atom_nm (distance from the centroid to the nearest atom column).
    probabilities : (6, H, W) float32 class probabilities for a single image, None for stacks.
    atoms : the atom columns every step used (the user's ``atoms``, else the atom finder's),
        (N, 2) (row, col) or, for stacks, (N, 3) (frame, row, col), in px.
    pixel_size : nm per pixel, or None.
    image_area_nm2 : area of one frame in nm², or None.
    """

    labels: np.ndarray
    class_names: list
    table: object
    probabilities: np.ndarray | None
    atoms: np.ndarray
    pixel_size: float | None
    image_area_nm2: float | None
    model: str
    device: str
    provenance: dict = field(default_factory=dict)

    def counts(self):
        """Defects per class (every class, zero counts included) and density per nm² of image."""
        import pandas as pd

        n_frames = self.labels.shape[0] if self.labels.ndim == 3 else 1
        area = self.image_area_nm2 * n_frames if self.image_area_nm2 else np.nan
        counts = self.table["class"].value_counts() if len(self.table) else {}
        rows = [
            {"class": c, "count": int(counts.get(c, 0)), "density_per_nm2": counts.get(c, 0) / area}
            for c in self.class_names
        ]
        return pd.DataFrame(rows, columns=["class", "count", "density_per_nm2"])


def _predictor(net, device, class_weights=None, tta: int = 1):
    """Return a function mapping a batch to (B, 6 or 7, h, w) probabilities.

    ``class_weights`` (the training cross-entropy weights) are divided out of the softmax,
    undoing their prior shift, so the class probabilities are calibrated (weighted training
    otherwise inflates rare classes). ``tta`` > 1 averages the probabilities over that many of
    the 8 flips/transposes.
    """
    import torch

    from napari_microml.nets.unet import batch_predictor

    log_w = None
    if class_weights is not None and len(class_weights) == N_OUTPUTS:
        log_w = torch.log(torch.as_tensor(class_weights, dtype=torch.float32, device=device)).view(
            1, -1, 1, 1
        )

    def probabilities(out):
        logits = out[:, :N_OUTPUTS] if log_w is None else out[:, :N_OUTPUTS] - log_w
        probs = torch.softmax(logits, dim=1)
        if out.shape[1] > N_OUTPUTS:
            probs = torch.cat([probs, torch.sigmoid(out[:, N_OUTPUTS : N_OUTPUTS + 1])], dim=1)
        return probs

    predict = batch_predictor(net, device, probabilities)
    if tta <= 1:
        return predict

    def averaged(batch):
        acc = None
        for k in range(tta):
            x = np.ascontiguousarray(_dihedral(batch, k))
            y = _dihedral(predict(x), k, inverse=True)
            acc = y if acc is None else acc + y
        return acc / tta

    return averaged


def _dihedral(a, k: int, inverse: bool = False):
    """Apply the k-th (0–7) flip/transpose of the last two axes to ``a`` (or its inverse)."""
    flip_r, flip_c, trans = k & 1, (k >> 1) & 1, (k >> 2) & 1
    if inverse and trans:
        a = np.swapaxes(a, -1, -2)
    if flip_r:
        a = a[..., ::-1, :]
    if flip_c:
        a = a[..., ::-1]
    if not inverse and trans:
        a = np.swapaxes(a, -1, -2)
    return a


def _out_channels(net) -> int:
    head = getattr(net, "head", None)
    return int(getattr(head, "out_channels", N_OUTPUTS))


def _check_atoms(atoms, stack_shape, is_stack: bool) -> np.ndarray | None:
    """Check the user's columns: (N, 2) (row, col) or, for a stack, (N, 3) (frame, row, col)."""
    if atoms is None:
        return None
    pos, frames = check_positions(
        atoms, stack_shape, n_frames=stack_shape[0], is_stack=is_stack, what="atoms"
    )
    return np.column_stack([frames.astype(float), pos]) if is_stack else pos


def _to_original_grid(labels, st, probs, cols, zoom: float, shape):
    """Map labels, instance statistics, probabilities and columns from the resampled grid back."""
    big = zoom_to(labels, shape, order=0).astype(np.int32)
    st = dict(st)
    pos = to_original(np.column_stack([st["row"], st["col"]]), zoom)
    st["row"], st["col"] = pos[:, 0], pos[:, 1]
    st["area_px"] = np.asarray(st["area_px"], float) / zoom**2
    # an instance smaller than a pixel of the original grid keeps its centre pixel
    present = np.zeros(len(pos) + 1, bool)
    present[np.unique(big)] = True
    for i in np.flatnonzero(~present[1:]):
        r, c = np.clip(np.rint(pos[i]).astype(int), 0, np.array(shape) - 1)
        big[r, c] = i + 1
    cols = np.clip(
        to_original(cols, zoom), -0.5, np.array(shape) - 0.5
    )  # a border peak stays on the image
    return big, st, zoom_to(probs, shape).astype(np.float32), cols


def segment_defects_iter(
    image,
    *,
    model="auto",
    threshold: float = 0.5,
    pixel_size: float | None = None,
    atoms=None,
    contrast: str = "auto",
    device="auto",
    tile: int = TILE,
    min_area: int = 3,
    tta: int = 1,
    column_check: bool | None = None,
    lattice_check: bool = True,
    edge_margin: float = 0.5,
    rescale="auto",
    input_name: str | None = None,
):
    """Find and classify defects like :func:`segment_defects`, as a generator.

    It takes the same parameters as :func:`segment_defects`. Stopping the generator between
    steps cancels the run.

    Yields
    ------
    tuple
        ``("progress", done, total, message)`` once the parameters are checked, before the
        contrast decision, after choosing or loading the model, after every network tile and
        while the atom finder runs (when ``atoms`` is not given), frame by frame for a stack.

    Returns
    -------
    DefectsResult
        The generator's return value, as :func:`segment_defects` returns it.
    """
    import pandas as pd
    from scipy.spatial import cKDTree

    from napari_microml.nets.registry import load_model, model_provenance
    from napari_microml.runtime.device import describe_device, resolve_device
    from napari_microml.runtime.tiling import tile_batch, tiled_predict

    check_contrast(contrast)
    threshold = check_probability(threshold)
    pixel_size = check_pixel_size(pixel_size)
    coarse = too_coarse(pixel_size)
    if coarse:  # no column shows: every call would be noise (one 'extended defect' on a survey)
        raise ValueError(
            f"Cannot look for defects: {coarse}. The defect segmenter needs an atomic-resolution "
            "image."
        )
    min_area = check_number(min_area, "min_area", low=1, integer=True, unit="pixels")
    tile = check_tile(tile)
    tta = check_number(
        tta, "tta (flipped/transposed copies to average)", low=1, high=8, integer=True
    )
    edge_margin = check_number(edge_margin, "edge_margin", low=0.0, unit="column spacings")
    yield progress(0, 1, "reading the image")  # cancel points through the set-up, too
    # 0–1 in float64 first: the same numbers (and defects) whatever the image's units
    scaled = as_scaled_stack(image, what="image")
    stack, is_stack = scaled.stack, scaled.is_stack
    levelled = Levelling()
    for frame in stack:  # a fresh array: stuck pixels (a spike is no defect), an SPM scan's tilt
        levelled |= prepare_frame(frame)
    if levelled.applied:
        yield progress(0, 1, str(levelled.describe()))
    user_atoms = _check_atoms(atoms, stack.shape, is_stack)
    first = fill_nonfinite(stack[0])
    zoom, period = zoom_for(first, rescale, low=6.0, high=30.0)  # trained: 6–24 px
    yield progress(0, 1, "deciding bright or dark columns")
    contrast_choice = decide(resample(first, zoom), contrast, period=period and period * zoom)
    contrast = contrast_choice.contrast
    if column_check is None:  # the column-intensity check relies on Z-contrast (HAADF/ADF)
        column_check = contrast == "bright"
    dev = resolve_device(device)
    finder_cols0, choice = None, None
    auto = isinstance(model, str) and model == "auto"
    step = "choosing the model: measured the lattice" if auto else "loading the model"
    yield progress(0, 1, step)  # a cancel point before the networks
    if auto:  # pick the model from the first frame's lattice
        from napari_microml.atoms.choose import LATTICE_MODEL
        from napari_microml.atoms.finder import find_atoms_iter
        from napari_microml.defects.material import choose_model

        frame0 = first.max() - first if contrast == "dark" else first
        if user_atoms is not None:
            cols0 = user_atoms[user_atoms[:, 0] == 0, 1:] if is_stack else user_atoms
        else:  # the lattice check below reuses these columns; progress (and Cancel) as it runs
            found = yield from relabel(
                find_atoms_iter(frame0, contrast="bright", model=LATTICE_MODEL, device=dev),
                "choosing the model: atom finder ",
            )
            cols0 = finder_cols0 = found.positions
        chosen, ratio = choose_model(frame0, cols0)
        choice = {"chosen": chosen, "sublattice_ratio": None if ratio is None else round(ratio, 3)}
        model = chosen
    # a dichalcogenide's dim sublattice is often found only in part: no equivalent sites to read
    periodic_check = not (isinstance(model, str) and model == "dichalcogenide")
    net, info = load_model("defects", model, dev)
    n_out = _out_channels(net)
    predict = _predictor(net, dev, (info.get("meta") or {}).get("class_weights"), int(tta))
    n_frames, (h, w) = len(stack), stack.shape[1:]
    labels_all, tables, atoms_all, probs_single, offset, n_weak = [], [], [], None, 0, 0
    n_edge, n_periodic = 0, 0
    for t, frame in enumerate(stack):
        frame = fill_nonfinite(frame)
        if contrast == "dark":
            frame = frame.max() - frame
        net_in = robust_normalize(resample(frame, zoom))
        gen = tiled_predict(
            predict,
            net_in[None],
            out_channels=min(n_out, N_OUTPUTS + 1),
            tile=tile,
            batch_size=tile_batch(tile, dev),
            multiple=getattr(net, "multiple", 8),
        )
        while True:
            try:
                done, total = next(gen)
            except StopIteration as stop:
                out = stop.value
                break
            yield progress(
                t * total + done, n_frames * total, f"frame {t + 1}/{n_frames}: tile {done}/{total}"
            )
        probs = out[:N_OUTPUTS]
        columns = yield from _frame_columns(
            frame, user_atoms, t, is_stack, dev, finder_cols0 if t == 0 else None
        )
        cols = to_resampled(columns, zoom)  # all of the post-processing works on the network's grid
        spacing = (
            float(np.median(cKDTree(cols).query(cols, k=2)[0][:, 1])) if len(cols) >= 10 else None
        )
        labels, st = instances(
            probs, threshold, int(min_area), spacing, cols if len(cols) else None
        )
        if column_check:
            labels, st, _ = check_columns(net_in, probs, labels, st, cols, spacing, threshold)
        if periodic_check:  # a faint feature in every cell (a light column) is no interstitial
            labels, st, dropped = interstitial_check(net_in, labels, st, cols, spacing)
            n_periodic += dropped
        if zoom != 1.0:
            labels, st, probs, _ = _to_original_grid(labels, st, probs, cols, zoom, (h, w))
        cols = columns
        if lattice_check:
            labels, st = _keep_near_lattice(labels, st, cols)
        if edge_margin > 0 and len(cols) >= 10:
            labels, st, dropped = _drop_at_edge(labels, st, cols, (h, w), edge_margin)
            n_edge += dropped
        weak = st["confidence"] < threshold  # guard: both sources already apply threshold
        if weak.any():
            labels, st = keep_instances(labels, st, ~weak)
            n_weak += int(weak.sum())
        centres = np.column_stack([st["row"], st["col"]])
        near = (
            cKDTree(cols).query(centres)[0]
            if len(cols) and len(centres)
            else np.full(len(centres), np.nan)
        )
        n = len(st["row"])
        df = pd.DataFrame(
            {
                "label": np.arange(1, n + 1) + offset,
                "class": [CLASS_NAMES[c - 1] for c in st["class_id"]],
                "class_id": st["class_id"],
                "row": st["row"],
                "col": st["col"],
                "area_px": st["area_px"],
                "area_nm2": st["area_px"] * pixel_size**2 if pixel_size else np.nan,
                "confidence": st["confidence"],
                "class_confidence": st["class_confidence"],
                "source": np.where(np.isfinite(st["column_z"]), "column check", "network"),
                "column_z": st["column_z"],
                "nearest_atom_px": near,
                "nearest_atom_nm": near * pixel_size if pixel_size else np.nan,
            }
        )
        if is_stack:
            df.insert(3, "frame", t)
            atoms_all.append(np.column_stack([np.full(len(cols), t, float), cols]))
        else:
            atoms_all.append(np.asarray(cols, float).reshape(-1, 2))
            probs_single = probs.astype(np.float32)
        labels_all.append(np.where(labels > 0, labels + offset, 0).astype(np.int32))
        tables.append(df)
        offset += n
    table = pd.concat(tables, ignore_index=True)
    table["label"] = table["label"].astype(np.int32)
    label = describe_device(dev)
    params = dict(
        model=("auto" if choice else str(model)) if not hasattr(model, "state_dict") else "custom",
        model_choice=choice,
        threshold=threshold,
        pixel_size=pixel_size,
        contrast=contrast,
        tile=tile,
        min_area=int(min_area),
        tta=int(tta),
        column_check=bool(column_check),
        lattice_check=bool(lattice_check),
        zoom=round(zoom, 4),
        estimated_period_px=period,
        rescale=rescale if isinstance(rescale, str) or rescale is None else float(rescale),
        atoms="given" if user_atoms is not None else "atom finder",
        contrast_choice=contrast_choice.record(),
        dropped_below_threshold=n_weak,
        edge_margin=float(edge_margin),
        dropped_at_edge=n_edge,
        interstitial_check=periodic_check,
        dropped_periodic_interstitials=n_periodic,
        levelling=levelled.describe(),
    )
    model_info = model_provenance(info)
    return DefectsResult(
        labels=np.stack(labels_all) if is_stack else labels_all[0],
        class_names=list(CLASS_NAMES),
        table=table,
        probabilities=None if is_stack else probs_single,
        atoms=np.concatenate(atoms_all),
        pixel_size=pixel_size,
        image_area_nm2=h * w * pixel_size**2 if pixel_size else None,
        model=str(info["name"]),
        device=label,
        provenance=make_provenance(
            "defect_segmenter",
            parameters=params,
            model=model_info,
            device=label,
            input_name=input_name,
        ),
    )


def _frame_columns(frame, user_atoms, t: int, is_stack: bool, dev, found=None):
    """Yield the atom-finder pass's progress and return frame ``t``'s atom columns (N, 2) in px.

    The user's when given, else ``found`` (a pass already made on this frame), else the atom
    finder's on ``frame`` (bright columns). Every later step (spacing, splitting, the column and
    lattice checks, nearest-atom distances, environments) uses these same columns, so giving the
    atom finder's columns as ``atoms`` changes nothing.
    """
    if user_atoms is not None:
        return user_atoms[user_atoms[:, 0] == t, 1:] if is_stack else user_atoms
    if found is not None:
        return found
    from napari_microml.atoms.choose import LATTICE_MODEL
    from napari_microml.atoms.finder import find_atoms_iter

    result = yield from relabel(
        find_atoms_iter(frame, contrast="bright", model=LATTICE_MODEL, device=dev),
        f"frame {t + 1}: atom columns, atom finder ",
    )
    return result.positions


def _keep_near_lattice(labels, st, columns):
    """Drop the point-defect instances far from every atom column.

    Returns ``(labels, st)`` without them (:mod:`napari_microml.defects.context`).
    """
    from napari_microml.defects.context import near_lattice

    point = st["class_id"] != len(CLASS_NAMES)
    if not point.any():
        return labels, st
    keep = ~point
    keep[point] = near_lattice(np.column_stack([st["row"], st["col"]])[point], columns)
    return keep_instances(labels, st, keep) if not keep.all() else (labels, st)


def _drop_at_edge(labels, st, columns, shape, margin: float):
    """Drop vacancies, dim dopants and interstitials within ``margin`` spacings of the edge.

    The border cuts their neighbourhood: a column cut by it looks missing, dim or out of place.
    It never looks brighter, so bright dopants are kept. Returns ``(labels, st, n_dropped)``.
    """
    from scipy.spatial import cKDTree

    ids = np.asarray(st["class_id"])
    point = (ids != len(CLASS_NAMES)) & (ids != CLASS_NAMES.index("dopant_bright") + 1)
    if not point.any():
        return labels, st, 0
    band = margin * float(np.median(cKDTree(columns).query(columns, k=2)[0][:, 1]))
    row, col = np.asarray(st["row"], float), np.asarray(st["col"], float)
    h, w = shape
    edge = point & ((row < band) | (row > h - 1 - band) | (col < band) | (col > w - 1 - band))
    if not edge.any():
        return labels, st, 0
    labels, st = keep_instances(labels, st, ~edge)
    return labels, st, int(edge.sum())


def segment_defects(
    image,
    *,
    model="auto",
    threshold: float = 0.5,
    pixel_size: float | None = None,
    atoms=None,
    contrast: str = "auto",
    device="auto",
    tile: int = TILE,
    min_area: int = 3,
    tta: int = 1,
    column_check: bool | None = None,
    lattice_check: bool = True,
    edge_margin: float = 0.5,
    rescale="auto",
    input_name: str | None = None,
) -> DefectsResult:
    """Find and classify the defects in a 2D image or a (T, H, W) stack.

    Parameters
    ----------
    image : array (H, W) or (T, H, W)
        Atomic-resolution grey image(s): HAADF/ADF or ABF/BF.
    model : str, path or torch.nn.Module
        ``'auto'`` (the default): ``'dichalcogenide'`` when the first frame's atom columns form a
        honeycomb of two unequally bright sublattices (2H-MoS2 / WS2 / WSe2, hBN;
        :mod:`napari_microml.defects.material`), else ``'default'``; the choice and the
        sublattice height ratio are in ``provenance['parameters']['model_choice']``. Or a
        shipped model name (``'default'``, ``'dichalcogenide'``), a ``.pt`` file, or a network.
    threshold : float
        Minimum defect probability (1 − p(defect-free)) of an instance pixel, 0–1, and minimum
        confidence of a reported defect: the network's mean defect probability for its own
        instances, the z-score-based confidence for dopants the column check adds
        (``source`` column); instances whose confidence ends below it are dropped (counted
        in ``parameters['dropped_below_threshold']``).
    pixel_size : float, optional
        nm per pixel; fills ``area_nm2``, ``nearest_atom_nm`` and densities.
    atoms : (N, 2) or, for stacks, (N, 3) (frame, row, col) array, optional
        Atom columns (e.g. an edited Points layer). By default the atom finder's columns
        (:func:`napari_microml.atoms.finder.find_atoms`, one network pass per frame). The same
        columns set the lattice spacing, split merged defects, feed the column and lattice
        checks and the nearest-atom distances and are returned as ``atoms``, so passing the atom
        finder's own columns gives the same defects.
    contrast : {'auto', 'bright', 'dark'}
        ``'dark'`` inverts ABF/BF images (dark columns) before the network; ``'auto'`` (default)
        decides from the first frame (:mod:`napari_microml.runtime.contrast`), recorded in
        ``parameters['contrast']`` and ``parameters['contrast_choice']``.
    device : {'auto', 'cuda', 'mps', 'cpu'}
    tile : int
        Largest tile edge in px (default 512: a run can be cancelled between tiles).
    min_area : int
        Instances smaller than this many pixels are dropped.
    tta : int
        Test-time augmentation: average the network over this many (1–8) flipped/transposed
        copies of the image; ``tta`` times slower. Helps most on noisy (low-dose) images
        (benchmarks/RESULTS.md).
    column_check : bool, optional
        Check the bright dopants against the atom-column intensities
        (:func:`napari_microml.defects.columns.column_check`): drop a predicted bright dopant
        whose column is not brighter than the columns of its own sublattice, and add one where a
        column is a clear outlier the network missed (e.g. a weak dopant on the dim B site of a
        perovskite). Only columns whose same-sublattice neighbours come in opposite pairs (a
        crystal) are judged, so scattered single atoms never gain dopants. Default: on for
        ``contrast='bright'`` (Z-contrast images), off for ABF, whose column intensities do not
        follow the atomic number.
    lattice_check : bool
        Keep a vacancy, dopant or interstitial only when an atom column lies within 1.5 local
        lattice spacings of it (:mod:`napari_microml.defects.context`): removes calls in the
        vacuum or on the support of nanoparticle and single-atom images (the columns of
        ``atoms`` above). Default on.
    edge_margin : float
        Drop a vacancy, dim dopant or interstitial whose centre lies within this many column
        spacings (median nearest-neighbour distance of ``atoms``) of the image edge: a column
        cut by the border looks missing, dim or out of place. Counted in
        ``parameters['dropped_at_edge']``. Default 0.5 (the band the benchmark ignores); 0 keeps
        them all. Bright dopants and extended regions are kept.
    rescale : 'auto', 'always', 'off' or float
        The network was trained on column spacings of 6–24 px. ``'auto'`` (default) resamples a
        clearly periodic image whose lattice period lies outside 6–30 px to a 14 px period
        (:mod:`napari_microml.runtime.spacing`); labels, centroids, areas and probabilities are
        returned on the original pixels. A number forces that factor; ``'always'`` resamples any
        clearly periodic image to a 14 px period; ``'off'`` never resamples.
    input_name : str, optional
        Name of the input (file or layer) recorded in ``provenance['input_layer']``.

    Returns
    -------
    DefectsResult
        Instance labels ``(H, W)`` or ``(T, H, W)`` int, a per-defect table (class, confidence,
        centroid in pixels, area in px and nm² with ``pixel_size``), the atom columns used,
        ``parameters`` and ``provenance``. An interstitial call whose site is no brighter than
        the same site in the neighbouring unit cells (a faint feature of every cell, e.g. a
        light column) is dropped (:mod:`napari_microml.defects.periodic`), counted in
        ``parameters['dropped_periodic_interstitials']``; not with the ``'dichalcogenide'``
        model, whose dim sublattice the atom finder often finds only in part
        (``parameters['interstitial_check']``).
    """
    return drain(
        segment_defects_iter(
            image,
            model=model,
            threshold=threshold,
            pixel_size=pixel_size,
            atoms=atoms,
            contrast=contrast,
            device=device,
            tile=tile,
            min_area=min_area,
            tta=tta,
            column_check=column_check,
            lattice_check=lattice_check,
            edge_margin=edge_margin,
            rescale=rescale,
            input_name=input_name,
        )
    )
