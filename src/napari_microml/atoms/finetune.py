"""Fine-tune the atom finder on a user's own corrected points, so it gets their images right.

``finetune_atoms(images, positions)`` copies a base model and trains it on crops of the user's
images (flips, 90° rotations, intensity, noise and blur jitter) mixed with replayed synthetic
frames of every scene and lattice, keeping the base's BatchNorm statistics (so it does not
forget lattices). A strip of every image is kept out of training as a validation split: early
stopping and the detection threshold are chosen on it. The saved weights can be a blend of
the base and the fine-tuned model (:func:`blend_weights`, the shares in ``ALPHAS``; today only
the fine-tuned model itself), and a guard of fresh simulated low-dose crystals can refuse blends
that find them worse than the base (``GUARD_LOSS``; off today). The new model is saved
(nets/user_models.py) only when it finds the user's held-out points better than the base model
does at the base's own best threshold; otherwise the base is kept and the result says why.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
from dataclasses import dataclass, field

import numpy as np

from napari_microml.runtime.workers import drain, progress

DEFAULT_STEPS = 600  # upper bound; early stopping usually ends sooner
EVAL_EVERY = 25  # steps between validation passes
PATIENCE = 8  # validation passes without a better held-out score before stopping
MIN_EVALS = 12  # never stop before this many validation passes (300 steps)
CROP = 96
BATCH = 8
REPLAY = 2  # crops per batch drawn from synthetic frames (all scenes and lattices)
N_REPLAY = 64  # synthetic frames in the replay pool
# when the points of every image form a lattice, this many more crops per batch are low-dose
# crystals: taught dim columns, a fine-tune otherwise fires on noise between the columns of
# crystals at 5-50 counts; not for isolated atoms, which those crystals teach it to miss
LOW_DOSE_PER_BATCH = 2
N_LOW_DOSE = 32  # low-dose crystals in their own replay pool; 0: none
LOW_DOSES = (5.0, 50.0)  # counts per column peak: the bottom decade of the base's training range
LR = 5e-4
THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.05), 2)
MIN_POINTS = 5
USER_SIGMA = 1.25  # heat-map peak width (px) on the user's points, as the shipped training's
MARGIN = 32  # px of context either side of a validation strip when predicting it
# shares of the fine-tuned model tried in the saved blend (1 - alpha)·base + alpha·fine-tuned
# (WiSE-FT, Wortsman et al. 2022); 1 only: blends chosen with the guard below lost on real
# images when judged (benchmarks/RESULTS.md, fine-tuning)
ALPHAS: tuple[float, ...] = (1.0,)
GUARD_FRAMES = 20  # fresh simulated crystals, all lattices, that a blend must still find
GUARD_SIZE = 256
GUARD_DOSES = (20, 40)  # counts: forgetting shows first at low dose
GUARD_LOSS: float | None = None  # most F1 a blend may lose on them vs the base; None: no guard
GUARD_SEED = 6_000_000  # apart from the replay pool's 5,000,000+ and the benchmarks' seeds
# the held-out score that chooses the checkpoint and stops training: "loss" (heat-map BCE) or
# "ap" (average precision of the peaks); "ap" lost when judged (benchmarks/RESULTS.md, fine-tuning)
SELECT_BY = "loss"
# other scores tracked beside SELECT_BY, each with its own checkpoint and stopping step, so a
# benchmark scores both choices from one fine-tune (training runs until every one has stopped)
COMPARE_BY: tuple[str, ...] = ()


@dataclass
class FinetuneResult:
    """What a fine-tune handed over.

    Attributes
    ----------
    name : str
        The model to use: the new one's short name, or the base when it did not beat it.
    kept_base : bool
        True when no model was written (``reason`` says why).
    reason : str
        One sentence for the status line.
    card : dict
        The model card (also for a kept base, with the scores that decided).
    history : list of dict
        One dict per validation pass: step, loss, val_f1, threshold.
    device : str
        Where it ran.
    tuned_state : dict or None
        The fine-tuned weights before blending with the base (alpha 1), for comparisons; not
        saved. None when no checkpoint improved on the base.
    compared : dict
        For each score in ``COMPARE_BY``: the checkpoint it would have chosen (``state``, or
        None when no checkpoint improved on it), its ``step``, held-out ``f1`` and
        ``threshold``, and the step training would have stopped at (``stopped``); not saved.
    """

    name: str
    kept_base: bool
    reason: str
    card: dict
    history: list = field(default_factory=list)
    device: str = ""
    tuned_state: dict | None = None
    compared: dict = field(default_factory=dict)


@dataclass
class _Item:
    """One user image on the network's grid, with its validation strip."""

    x: np.ndarray  # network input
    target: np.ndarray  # heat map of the user's points
    points: np.ndarray  # (N, 2) on the network grid
    axis: int  # the strip runs across this axis
    lo: int
    hi: int  # validation strip [lo, hi) along ``axis``
    train: tuple  # allowed crop start range along ``axis``: [a, b]

    def in_strip(self, pos: np.ndarray) -> np.ndarray:
        return (pos[:, self.axis] >= self.lo) & (pos[:, self.axis] < self.hi)


def _held_out_words(items: list, names: list, fraction: float) -> str:
    """Which part of each image was kept out of training, as a microscopist would say it."""
    share = f"{fraction:.0%}"
    edges = [
        ("top", "bottom")[it.lo > 0] if it.axis == 0 else ("left", "right")[it.lo > 0]
        for it in items
    ]
    if len(items) > 3 or any(not n for n in names):
        if len(set(edges)) == 1:
            return f"the {edges[0]} {share} of {'the image' if len(items) == 1 else 'each image'}"
        return f"a {share} band along one edge of each image: " + ", ".join(edges)
    parts = [f"the {e} {share} of {n}" for e, n in zip(edges, names, strict=True)]
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def _as_lists(images, positions):
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images, positions = [images], [positions]
    if not isinstance(images, (list, tuple)) or not isinstance(positions, (list, tuple)):
        raise TypeError(
            "images must be a list of 2D arrays and positions a list of (N, 2) "
            "(row, col) arrays, one per image."
        )
    if len(images) != len(positions) or not images:
        raise ValueError(
            f"Give one array of points per image: {len(images)} image(s) but "
            f"{len(positions)} point list(s)."
        )
    imgs, pts = [], []
    for i, (img, pos) in enumerate(zip(images, positions, strict=True)):
        img = np.asarray(img, np.float32)
        if img.ndim != 2:
            raise ValueError(
                f"Image {i + 1} has shape {img.shape}; fine-tuning needs 2D grey images "
                "(pick single frames of a stack)."
            )
        pos = np.asarray(pos, float)
        if pos.size == 0:
            pos = pos.reshape(0, 2)
        if pos.ndim != 2 or pos.shape[1] != 2 or not np.isfinite(pos).all():
            raise ValueError(
                f"The points of image {i + 1} must be an (N, 2) array of finite "
                "(row, col) pixel positions."
            )
        h, w = img.shape
        out = (
            (pos[:, 0] < -0.5) | (pos[:, 0] > h - 0.5) | (pos[:, 1] < -0.5) | (pos[:, 1] > w - 0.5)
        )
        if out.any():
            raise ValueError(
                f"{int(out.sum())} point(s) of image {i + 1} lie outside its {h}×{w} "
                "pixels; are they (row, col) in pixels of that image?"
            )
        imgs.append(img)
        pts.append(pos)
    if sum(len(p) for p in pts) < MIN_POINTS:
        raise ValueError(
            f"Fine-tuning needs at least {MIN_POINTS} corrected points in all; mark "
            "every atom of at least one image."
        )
    return imgs, pts


def _as_the_finder_reads(img, scan: str):
    """Return the frame as find_atoms prepares it: stuck pixels repaired, an SPM scan levelled.

    A frame this leaves alone keeps its own numbers, so a fine-tune repeats to the bit.
    """
    from napari_microml.runtime.level import prepare_frame
    from napari_microml.runtime.validate import as_scaled_stack

    frame = as_scaled_stack(img, what="image").stack[0]
    kept = frame.copy()
    prepare_frame(frame, scan=scan)
    return img if np.array_equal(frame, kept, equal_nan=True) else frame


def _on_grid(img, pos, kind, contrast, scan="auto"):
    """Return (zoom, network input, points) as find_atoms prepares and resamples the image."""
    from napari_microml.atoms.finder import NOISY_PERIOD, network_input
    from napari_microml.runtime.contrast import decide
    from napari_microml.runtime.spacing import resample, to_resampled, zoom_for
    from napari_microml.runtime.validate import fill_nonfinite

    frame = fill_nonfinite(_as_the_finder_reads(img, scan))
    zoom, spacing = zoom_for(frame, "auto", noisy_high=NOISY_PERIOD)
    if (
        decide(resample(frame, zoom), contrast, period=spacing and spacing * zoom).contrast
        == "dark"
    ):
        frame = frame.max() - frame  # as find_atoms does: the network sees bright columns
    x = network_input(resample(frame, zoom), kind)
    return zoom, x, (to_resampled(pos, zoom) if zoom != 1.0 else pos)


def _prepare(img, pos, kind, fraction, seed, crop, contrast="auto", scan="auto"):
    """Put the image and its points on the network's grid, with a validation strip.

    The grid is the one find_atoms resamples to; the strip is ``fraction`` of the image at the
    one of its four edges holding the share of the points nearest to ``fraction`` (sparse atoms
    may all sit in one part of the frame).
    """
    from napari_microml.synth.render import heatmap

    zoom, x, points = _on_grid(img, pos, kind, contrast, scan)
    strips = []
    for k in range(4):
        axis, side = (k + seed) % 4 // 2, (k + seed) % 2  # the seed rotates the order of ties
        n = x.shape[axis]
        width = int(round(fraction * n))
        if n - width < crop or min(x.shape) < crop:
            continue
        lo, hi = (0, width) if side == 0 else (n - width, n)
        share = (
            float(np.mean((points[:, axis] >= lo) & (points[:, axis] < hi))) if len(points) else 0.0
        )
        train = (hi, n - crop) if side == 0 else (0, lo - crop)
        strips.append((abs(share - fraction), axis, lo, hi, train))
    if not strips:
        raise ValueError(
            f"An image of {img.shape[0]}×{img.shape[1]} px is too small to fine-tune on: "
            f"it needs {crop} px beside a validation strip of {fraction:g} of it."
        )
    _, axis, lo, hi, train = min(strips, key=lambda s: s[0])
    return zoom, _Item(x, heatmap(x.shape, points, USER_SIGMA), points, axis, lo, hi, train)


def _tolerance(points: list) -> float:
    """Return the matching distance for the validation F1 (px, network grid).

    0.3 × the median distance between neighbouring user points, 1.5–5 px (close to the box
    protocol's on sparse atoms).
    """
    from scipy.spatial import cKDTree

    nn = [cKDTree(p).query(p, k=2)[0][:, 1] for p in points if len(p) > 1]
    d = float(np.median(np.concatenate(nn))) if nn else 10.0
    return float(np.clip(0.3 * d, 1.5, 5.0))


def _crop(item: _Item, size: int, rng) -> tuple:
    """Draw a training crop (input, target) outside the validation strip, often near a point."""
    shape = item.x.shape
    lo_a, hi_a = item.train
    other = 1 - item.axis
    pts = item.points[~item.in_strip(item.points)]
    start = [0, 0]
    if len(pts) and rng.uniform() < 0.7:
        c = pts[rng.integers(len(pts))] + rng.uniform(-size / 3, size / 3, 2) - size / 2
        start[item.axis] = int(np.clip(c[item.axis], lo_a, hi_a))
        start[other] = int(np.clip(c[other], 0, shape[other] - size))
    else:
        start[item.axis] = int(rng.integers(lo_a, hi_a + 1))
        start[other] = int(rng.integers(0, shape[other] - size + 1))
    sl = (slice(start[0], start[0] + size), slice(start[1], start[1] + size))
    return item.x[sl][None], item.target[sl][None]


def _low_dose_pair(seed: int, size: int, kind: str) -> tuple:
    """Return (network input, heat map) of a simulated crystal of a standard lattice at low dose."""
    from napari_microml.atoms.finder import network_input
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.render import heatmap
    from napari_microml.training.atoms import HEAT_SIGMA

    dose = float(np.exp(np.random.default_rng(seed).uniform(*np.log(LOW_DOSES))))
    s = simulate_lattice((size, size), scene="crystal", seed=seed, dose=dose)
    return network_input(s.image, kind)[None], heatmap((size, size), s.positions, HEAT_SIGMA)[None]


def _jitter(x: np.ndarray, rng) -> np.ndarray:
    """Intensity gain/offset, and sometimes Gaussian noise or a slight blur."""
    from scipy import ndimage as ndi

    if rng.uniform() < 0.3:
        x = ndi.gaussian_filter(x, (0, rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)))
    if rng.uniform() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.01, 0.06), x.shape)
    return x * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)


def _first_hits(pos: np.ndarray, score: np.ndarray, true: np.ndarray, tol: float) -> np.ndarray:
    """Return, per peak, whether it is the best-scored peak within ``tol`` of a free point.

    Peaks are taken from the highest score down, each claiming its nearest unclaimed point
    (the matching of detection average precision).
    """
    hit = np.zeros(len(pos), bool)
    if not len(pos) or not len(true):
        return hit
    from scipy.spatial.distance import cdist

    d = cdist(pos, true)
    free = np.ones(len(true), bool)
    for i in np.argsort(-score, kind="stable"):
        near = np.where(free & (d[i] <= tol))[0]
        if len(near):
            free[near[np.argmin(d[i, near])]] = False
            hit[i] = True
    return hit


def average_precision(scores, hits, *, n_true: int) -> float:
    """Return the average precision of scored detections against ``n_true`` true points.

    The area under the precision-recall curve as the threshold falls through the scores,
    precision made non-increasing in recall (as in the PASCAL VOC and COCO detection scores);
    points never detected cap the recall.

    Parameters
    ----------
    scores : (N,) array
        The detections' scores (pooled over images).
    hits : (N,) bool array
        Whether each detection matched a true point (each point matched at most once).
    n_true : int
        The number of true points.

    Returns
    -------
    float
        0-1; 0 when nothing matched (or there are no true points).
    """
    scores, hits = np.asarray(scores, float), np.asarray(hits, bool)
    if n_true <= 0 or not hits.any():
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    precision = tp / np.arange(1, len(order) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(envelope[hits[order]].sum() / n_true)


class _Validator:
    """Score a network on the validation strips.

    Peaks of the probability map at every threshold are matched to the user's points there
    (Hungarian, within ``tolerance``); counts are pooled over images. ``ap`` ranks all peaks
    above the lowest threshold, pooled over the strips (:func:`average_precision`).
    """

    def __init__(self, items, tolerance, dev):
        self.items, self.tol, self.dev = items, tolerance, dev

    def __call__(self, net) -> dict:
        import torch

        from napari_microml.atoms.finder import local_maxima
        from napari_microml.atoms.metrics import match_points
        from napari_microml.nets.unet import batch_predictor
        from napari_microml.runtime.tiling import tiled_predict

        net.eval()
        predict = batch_predictor(net, self.dev, torch.sigmoid)
        tp, n_pred, n_true = np.zeros(len(THRESHOLDS)), np.zeros(len(THRESHOLDS)), 0
        loss = 0.0
        ranked: list[tuple[np.ndarray, np.ndarray]] = []
        for item in self.items:
            a = max(item.lo - MARGIN, 0)  # the strip with some context, not the whole image
            sl = [slice(None), slice(None)]
            sl[item.axis] = slice(a, min(item.hi + MARGIN, item.x.shape[item.axis]))
            prob = drain(
                tiled_predict(
                    predict,
                    item.x[tuple(sl)][None],
                    out_channels=1,
                    tile=1024,
                    multiple=getattr(net, "multiple", 8),
                )
            )[0]
            pos, score = local_maxima(prob, threshold=float(THRESHOLDS[0]) - 0.01, min_distance=2)
            pos[:, item.axis] += a
            keep = item.in_strip(pos)
            pos, score = pos[keep], score[keep]
            true = item.points[item.in_strip(item.points)]
            n_true += len(true)
            reachable = score > THRESHOLDS[0]
            ranked.append(
                (score[reachable], _first_hits(pos[reachable], score[reachable], true, self.tol))
            )
            for j, t in enumerate(THRESHOLDS):
                pred = pos[score > t]
                n_pred[j] += len(pred)
                tp[j] += len(match_points(pred, true, self.tol)["pairs"])
            sl[item.axis] = slice(item.lo - a, item.hi - a)
            p = np.clip(prob[tuple(sl)], 1e-6, 1 - 1e-6)
            sl[item.axis] = slice(item.lo, item.hi)
            y = item.target[tuple(sl)]
            loss += float(np.mean(-(1 + 9 * y) * (y * np.log(p) + (1 - y) * np.log(1 - p))))
        f1 = np.where(n_pred + n_true > 0, 2 * tp / np.maximum(n_pred + n_true, 1), 1.0)
        # a few dozen held-out points make F1(threshold) jagged: judge a threshold with neighbours
        smooth = np.convolve(np.pad(f1, 2, mode="edge"), np.ones(5) / 5, mode="valid")
        best = int(np.argmax(smooth))  # ties: the lowest threshold
        return {
            "f1": float(smooth[best]),
            "threshold": float(THRESHOLDS[best]),
            "loss": loss / len(self.items),
            "ap": average_precision(
                np.concatenate([r[0] for r in ranked]),
                np.concatenate([r[1] for r in ranked]),
                n_true=n_true,
            ),
            "f1_by_threshold": f1.round(4).tolist(),
            "tp": tp.astype(int).tolist(),
            "n_pred": n_pred.astype(int).tolist(),
            "n_points": int(n_true),
        }


class _Selector:
    """Choose the checkpoint by one held-out score, and say when training should stop.

    ``ap`` (higher is better; a tie goes to the later step, the longer-trained model) or
    ``loss`` (lower is better). Training stops after ``PATIENCE`` passes without a strictly
    better score, never before ``MIN_EVALS`` passes.
    """

    IS = {
        "ap": "highest held-out average precision of the peaks (ties: the later step)",
        "loss": "lowest held-out heat-map loss",
    }

    def __init__(self, by: str, before: dict):
        if by not in self.IS:
            raise ValueError(f"A checkpoint is chosen by one of {sorted(self.IS)}, not {by!r}.")
        self.by, self.since, self.stopped = by, 0, 0
        self.best = {**before, "step": 0, "state": None}

    def _score(self, val: dict) -> float:
        return val["ap"] if self.by == "ap" else -val["loss"]

    def update(self, val: dict, step: int, net, n_evals: int) -> None:
        if self.stopped:
            return
        score, best = self._score(val), self._score(self.best)
        if score > best or (self.by == "ap" and score == best):
            self.best = {**val, "step": step, "state": copy.deepcopy(net.state_dict())}
        self.since = 0 if score > best else self.since + 1
        if self.since >= PATIENCE and n_evals > MIN_EVALS:
            self.stopped = step

    def summary(self) -> dict:
        return {
            "state": self.best["state"],
            "step": self.best["step"],
            "f1": self.best["f1"],
            "threshold": self.best["threshold"],
            "stopped": self.stopped,
        }


class _Guard:
    """Fresh simulated low-dose crystals that a blend must find as well as the base does.

    F1 is pooled over the frames: peaks of the probability map above the model's threshold,
    matched to the simulated columns away from the frame's edge (Hungarian, within a third of
    the lattice spacing, as benchmarks/atoms.py scores the finder).
    """

    def __init__(self, kind, dev, seed):
        from napari_microml.synth.lattice import LATTICES, simulate_lattice

        rng = np.random.default_rng(GUARD_SEED + seed)
        self.dev, self.frames = dev, []
        for i in range(GUARD_FRAMES):
            spacing = float(rng.uniform(8, 18))
            sample = simulate_lattice(
                (GUARD_SIZE, GUARD_SIZE),
                scene="crystal",
                lattice=LATTICES[i % len(LATTICES)],
                seed=GUARD_SEED + 1_000 * seed + i,
                spacing=spacing,
                dose=float(GUARD_DOSES[i % len(GUARD_DOSES)]),
            )
            zoom, x, points = _on_grid(sample.image, sample.positions, kind, "auto")
            self.frames.append((x, points, max(1.5, min(spacing, 12) / 3) * zoom, 6 * zoom))

    def __call__(self, net, threshold: float) -> float:
        import torch

        from napari_microml.atoms.finder import local_maxima
        from napari_microml.atoms.metrics import match_points
        from napari_microml.nets.unet import batch_predictor
        from napari_microml.runtime.tiling import tiled_predict

        net.eval()
        predict = batch_predictor(net, self.dev, torch.sigmoid)
        tp = n_pred = n_true = 0
        for x, points, tol, margin in self.frames:
            multiple = getattr(net, "multiple", 8)
            prob = drain(
                tiled_predict(predict, x[None], out_channels=1, tile=1024, multiple=multiple)
            )[0]
            pred = local_maxima(prob, threshold=threshold, min_distance=2)[0]

            def inner(p, shape=x.shape, m=margin):
                return p[(p > m).all(1) & (p[:, 0] < shape[0] - m) & (p[:, 1] < shape[1] - m)]

            pred, true = inner(pred), inner(points)
            tp += len(match_points(pred, true, tol)["pairs"])
            n_pred, n_true = n_pred + len(pred), n_true + len(true)
        return 2 * tp / max(n_pred + n_true, 1)


def blend_weights(base_state: dict, tuned_state: dict, *, alpha: float) -> dict:
    """Return the weights ``(1 - alpha)·base + alpha·tuned`` of two copies of one network.

    Weight-space ensembling of a model and its fine-tuned copy (WiSE-FT): ``alpha`` 0 gives the
    base exactly, 1 the fine-tuned weights exactly. Integer entries (BatchNorm's batch counter)
    are taken from ``tuned_state``.

    Parameters
    ----------
    base_state, tuned_state : dict
        ``state_dict()`` of the model before and after fine-tuning (same keys and shapes).
    alpha : float
        The fine-tuned model's share, 0-1.

    Returns
    -------
    dict
        A new state dict (the inputs are not changed).
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is the fine-tuned model's share, 0-1; got {alpha:g}.")
    if base_state.keys() != tuned_state.keys():
        raise ValueError("The two models' weights differ in their names: not one network.")
    out = {}
    for key, t in tuned_state.items():
        b = base_state[key]
        if b.shape != t.shape:
            raise ValueError(f"{key}: shapes {tuple(b.shape)} and {tuple(t.shape)} differ.")
        out[key] = (1.0 - alpha) * b + alpha * t if t.is_floating_point() else t.clone()
    return out


def _array_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def finetune_atoms_iter(
    images,
    positions,
    *,
    base="default",
    steps=None,
    seed: int = 0,
    name: str | None = None,
    validation: float = 0.2,
    device="auto",
    contrast: str = "auto",
    scan="auto",
    image_names=None,
    in_use: str | None = None,
):
    """Fine-tune the atom finder like :func:`finetune_atoms`, as a generator.

    It takes the same parameters as :func:`finetune_atoms`, and two more (below). Closing it
    (Stop) before it returns writes nothing: the model files are written at the very end,
    atomically.

    Parameters
    ----------
    image_names : list of str, optional
        One name per image (file or layer), recorded in the model card.
    in_use : str, optional
        The model the user has been running (the Atom finder's), when it is not ``base``: the
        new model is saved only when it also finds the held-out points better than this one.

    Yields
    ------
    tuple
        ``("progress", done, total, message)`` while preparing, every training step and
        before the final check; ``("loss", step, total, {"loss": ..., "val_f1": ...,
        "threshold": ...})`` for the base model (step 0, loss None) and after every validation
        pass.

    Returns
    -------
    FinetuneResult
        The generator's return value: the model to use (the new one, or ``base`` when the
        fine-tuned model did not beat it and nothing was written), why, the model card, the
        validation history and the device.
    """
    import torch
    import torch.nn.functional as F

    from napari_microml.atoms.finder import input_kind, lattice_spacing
    from napari_microml.nets.registry import load_model
    from napari_microml.nets.user_models import check_name, list_user_models, save_user_model
    from napari_microml.runtime.device import describe_device, resolve_device
    from napari_microml.runtime.level import check_scan
    from napari_microml.runtime.provenance import make_provenance
    from napari_microml.training.atoms import ARCH, make_pair
    from napari_microml.training.common import dihedral, seed_everything

    imgs, pts = _as_lists(images, positions)
    scans = [check_scan(scan)] * len(imgs) if isinstance(scan, str) else list(scan)
    if len(scans) != len(imgs):
        raise ValueError(f"scan gives {len(scans)} kinds for {len(imgs)} images; give one each.")
    scans = [check_scan(k) for k in scans]
    if not 0 < float(validation) <= 0.5:
        raise ValueError(
            "validation is the fraction of each image kept to check the model; "
            "choose a value between 0 and 0.5 (0.2 works for 1-5 images)."
        )
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError("steps must be a whole number ≥ 1 (or None for the automatic choice).")
    max_steps = int(steps) if steps is not None else DEFAULT_STEPS
    stamp = _dt.datetime.now()
    name = name or f"tuned-{stamp:%Y%m%d-%H%M%S}"
    full = check_name(name, "atoms")
    if full in list_user_models("atoms"):
        raise ValueError(
            f"A model named {name!r} already exists; choose another name or delete it first."
        )
    names = list(image_names) if image_names is not None else [None] * len(imgs)

    dev = resolve_device(device)
    net, info = load_model("atoms", base, dev)
    kind = input_kind(net, info)
    base_threshold = float((info.get("meta") or {}).get("recommended_threshold", 0.5))
    crop = min(CROP, *(8 * (min(i.shape) // 8) for i in imgs))
    yield progress(0, max_steps, "preparing your images")
    prepared = [
        _prepare(img, pos, kind, float(validation), seed + i, crop, contrast, k)
        for i, (img, pos, k) in enumerate(zip(imgs, pts, scans, strict=True))
    ]
    items = [it for _, it in prepared]
    if sum(int(it.in_strip(it.points).sum()) for it in items) == 0:
        raise ValueError(
            "None of your points lies in the validation part of the images (a "
            f"{float(validation):.0%} band along one edge of each), so the result could not be "
            "checked; mark the atoms over the whole image."
        )
    tol = _tolerance([it.points for it in items])
    validate = _Validator(items, tol, dev)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    replay = [
        make_pair(5_000_000 + 1_000 * seed + i, crop, input_kind=kind) for i in range(N_REPLAY)
    ]
    lattice = all(lattice_spacing(p) is not None for p in pts)
    n_low = LOW_DOSE_PER_BATCH if lattice and N_LOW_DOSE else 0
    low_dose = [
        _low_dose_pair(5_000_500 + 1_000 * seed + i, crop, kind)
        for i in range(N_LOW_DOSE if n_low else 0)
    ]

    before = validate(net)
    rival = None  # the model in use, when fine-tuning starts from another one
    if in_use is not None:
        other, other_info = load_model("atoms", in_use, dev)
        if other_info["name"] != info["name"] and input_kind(other, other_info) == kind:
            rival = {"name": other_info["name"], "f1": validate(other)["f1"]}
        del other
    base_state = copy.deepcopy(net.state_dict())
    base_own = before["f1_by_threshold"][int(np.argmin(np.abs(THRESHOLDS - base_threshold)))]
    yield (
        "loss",
        0,
        max_steps,
        {"loss": None, "val_f1": before["f1"], "threshold": before["threshold"]},
    )
    selectors = [_Selector(by, before) for by in dict.fromkeys((SELECT_BY, *COMPARE_BY))]
    history = [
        {
            "step": 0,
            "loss": None,
            "val_f1": before["f1"],
            "threshold": before["threshold"],
            "val_ap": round(before["ap"], 4),
        }
    ]
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    losses, step = [], 0
    for step in range(1, max_steps + 1):
        net.train()
        # the base's BatchNorm statistics stay: re-estimated from batches of 8 crops, mostly
        # the user's few images, they shift what the network does on every other image
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        xs, ys = [], []
        for b in range(BATCH):
            if b < n_low:
                x, y = low_dose[rng.integers(len(low_dose))]
            elif b < n_low + REPLAY:
                x, y = replay[rng.integers(N_REPLAY)]
            else:
                x, y = _crop(items[rng.integers(len(items))], crop, rng)
            x, y = dihedral([x, y], int(rng.integers(8)))
            xs.append(_jitter(x, rng))
            ys.append(y)
        xb = torch.from_numpy(np.stack(xs)).float().to(dev)
        yb = torch.from_numpy(np.stack(ys)).float().to(dev)
        loss = F.binary_cross_entropy_with_logits(net(xb), yb, weight=1 + 9 * yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        yield progress(step, max_steps, f"step {step}/{max_steps}: loss {losses[-1]:.4f}")
        if step % EVAL_EVERY and step != max_steps:
            continue
        val = validate(net)
        row = {
            "step": step,
            "loss": float(np.mean(losses[-EVAL_EVERY:])),
            "val_f1": val["f1"],
            "threshold": val["threshold"],
            "val_ap": round(val["ap"], 4),
        }
        history.append(row)
        yield ("loss", step, max_steps, {k: row[k] for k in ("loss", "val_f1", "threshold")})
        for sel in selectors:
            sel.update(val, step, net, len(history))
        if all(sel.stopped for sel in selectors):
            break
    for sel in selectors:
        sel.stopped = sel.stopped or step
    best = selectors[0].best
    yield progress(max_steps, max_steps, "checking the new model on your held-out points")
    blends: list[dict] = []
    guard_base = None
    if best["state"] is not None:
        guard = _Guard(kind, dev, seed) if GUARD_LOSS is not None else None
        if guard is not None:
            net.load_state_dict(base_state)
            guard_base = guard(net, base_threshold)
        for a in ALPHAS:
            yield progress(max_steps, max_steps, f"checking a blend with the base (alpha {a:g})")
            net.load_state_dict(blend_weights(base_state, best["state"], alpha=a))
            val = validate(net)
            row = {"alpha": a, "f1": round(val["f1"], 4), "threshold": val["threshold"]}
            if guard is not None and guard_base is not None and GUARD_LOSS is not None:
                kept = guard(net, val["threshold"])
                row.update(guard_f1=round(kept, 4), guard_ok=guard_base - kept <= GUARD_LOSS)
            blends.append(row)
    safe = [b for b in blends if b.get("guard_ok", True)]
    # the best held-out F1 among the blends that still find the crystals; ties: nearer the base
    chosen = max(safe, key=lambda b: b["f1"], default=None)

    card = {
        "base": info["name"],
        "base_sha256": info["sha256"],
        "created": stamp.isoformat(timespec="seconds"),
        "images": [
            {
                "name": n,
                "shape": list(i.shape),
                "sha256": _array_sha256(i),
                "n_points": len(p),
                "zoom": round(z, 4),
            }
            for n, i, p, (z, _) in zip(names, imgs, pts, prepared, strict=True)
        ],
        "n_points": int(sum(len(p) for p in pts)),
        "steps": selectors[0].stopped,
        "max_steps": max_steps,
        "best_step": best["step"],
        "selected_by": SELECT_BY,
        "seed": seed,
        "validation": {
            "f1_is": "pooled over the held-out strips, mean of a threshold and its 4 neighbours",
            "fraction": float(validation),
            "n_points": before["n_points"],
            "tolerance_px": round(tol, 2),
            "f1_before": round(before["f1"], 4),
            "ap_before": round(before["ap"], 4),
            "ap_at_best_step": round(selectors[0].best["ap"], 4),
            "threshold_before": before["threshold"],
            "f1_before_at_its_threshold": round(float(base_own), 4),
            "in_use": None if rival is None else rival["name"],
            "f1_in_use": None if rival is None else round(rival["f1"], 4),
            "f1_after": round(chosen["f1"] if chosen else best["f1"], 4),
            "threshold": chosen["threshold"] if chosen else best["threshold"],
        },
        "blend": {
            "is": "saved weights = (1 - alpha)·base + alpha·fine-tuned (WiSE-FT)",
            "alpha": chosen["alpha"] if chosen else None,
            "grid": blends,
            "guard": {
                "frames": GUARD_FRAMES,
                "size": GUARD_SIZE,
                "doses": list(GUARD_DOSES),
                "seed": GUARD_SEED + seed,
                "base_f1": None if guard_base is None else round(guard_base, 4),
                "max_loss": GUARD_LOSS,
            },
        },
        "recipe": {
            "crop": crop,
            "batch": BATCH,
            "replay_per_batch": REPLAY,
            "points_form_lattices": lattice,
            "low_dose_replay_per_batch": n_low,
            "low_dose_crystals_replayed": N_LOW_DOSE,
            "low_dose_counts": list(LOW_DOSES),
            "lr": LR,
            "eval_every": EVAL_EVERY,
            "patience": PATIENCE,
            "checkpoint": _Selector.IS[SELECT_BY],
            "batchnorm": "base statistics kept",
        },
        "history": history,
        "provenance": make_provenance(
            "finetune_atoms",
            model={k: info[k] for k in ("name", "file", "sha256")},
            device=describe_device(dev),
            seed=seed,
            parameters={
                "steps": steps,
                "validation": validation,
                "name": name,
                "contrast": contrast,
                "scan": scans,
            },
        ),
    }
    short_base = info["name"].removeprefix("atoms-")
    held_out = _held_out_words(items, names, float(validation))
    device_label = describe_device(dev)
    tuned = best["state"]
    compared = {sel.by: sel.summary() for sel in selectors[1:]}
    # better than where it started, not better than what the user had: not handed over
    if chosen is not None and rival is not None and before["f1"] < chosen["f1"] <= rival["f1"]:
        short_rival = rival["name"].removeprefix("atoms-")
        reason = (
            f"Kept {short_rival!r}, the model you were using: on your held-out points ("
            f"{held_out}) the model fine-tuned from {short_base!r} "
            f"reached F1 {chosen['f1']:.3f} ({short_base} {before['f1']:.3f}), not above "
            f"{short_rival}'s {rival['f1']:.3f}. Correct more points, allow more steps or "
            f"start from {short_rival!r}."
        )
        card["blend"]["alpha"] = None
        return FinetuneResult(
            short_rival, True, reason, card, history, device_label, tuned, compared
        )
    if chosen is None or chosen["f1"] <= before["f1"]:
        top = max(blends, key=lambda b: b["f1"], default=None)
        if top is not None and top["f1"] > before["f1"] and guard_base is not None:
            why = (
                f"the fine-tuned model reached F1 {top['f1']:.3f} there (the base "
                f"{before['f1']:.3f}) but found simulated low-dose crystals worse than the base "
                f"(F1 {top['guard_f1']:.3f} vs {guard_base:.3f}), and no blend with the base "
                "kept both"
            )
        else:
            f1 = max([best["f1"]] + [b["f1"] for b in blends])
            why = f"the fine-tuned model reached F1 {f1:.3f}, not above the base's "
            why += f"{before['f1']:.3f}"
        reason = (
            f"Kept the base model {short_base!r}: on your held-out points ({held_out}) {why}. "
            "Correct more points or images and try again."
        )
        card["blend"]["alpha"] = None
        return FinetuneResult(
            short_base, True, reason, card, history, device_label, tuned, compared
        )
    net.load_state_dict(blend_weights(base_state, best["state"], alpha=chosen["alpha"]))
    meta = {
        "input": kind,
        "recommended_threshold": chosen["threshold"],
        "base": info["name"],
        "blend_alpha": chosen["alpha"],
        "finetuned_on_user_points": True,
    }
    entry = save_user_model(net.cpu().eval(), full, task="atoms", arch=ARCH, meta=meta, card=card)
    reason = (
        f"Saved {full.removeprefix('atoms-')!r}: F1 on your held-out points {before['f1']:.3f} "
        f"({short_base}) → {chosen['f1']:.3f} (threshold {chosen['threshold']:g}), best at step "
        f"{best['step']}"
        + ("" if rival is None else f"; {rival['name'].removeprefix('atoms-')} {rival['f1']:.3f}")
        + (
            f", {chosen['alpha']:.0%} fine-tuned and {1 - chosen['alpha']:.0%} base."
            if chosen["alpha"] < 1
            else "."
        )
    )
    return FinetuneResult(
        full.removeprefix("atoms-"), False, reason, entry, history, device_label, tuned, compared
    )


def finetune_atoms(
    images,
    positions,
    *,
    base="default",
    steps=None,
    seed: int = 0,
    name: str | None = None,
    validation: float = 0.2,
    device="auto",
    contrast: str = "auto",
    scan="auto",
) -> str:
    """Fine-tune the atom finder on your own corrected points; return the model's name.

    Parameters
    ----------
    images : list of 2D arrays
        The images you corrected (1-5 are enough).
    positions : list of (N_i, 2) arrays
        Every atom column of each image, (row, col) in pixels: the finder's points after your
        corrections.
    base : str
        The model to start from (a shipped or an earlier fine-tuned atom model).
    steps : int, optional
        Most training steps (default 600; training stops earlier when the held-out F1 stops
        improving).
    seed : int
        Seeds the crops, augmentation and replayed synthetic frames.
    name : str, optional
        The new model's name (default ``tuned-<date>-<time>``).
    validation : float
        The fraction of each image (a strip at one edge) kept out of training to choose the
        stopping step and threshold and to compare with the base model.
    device : {'auto', 'cuda', 'mps', 'cpu'}
    contrast : {'auto', 'bright', 'dark'}
        As for :func:`~napari_microml.atoms.finder.find_atoms`: dark columns (ABF/BF) are
        inverted for the network, so the model learns what the finder will show it.
    scan : {'auto', 'spm'} or list of them
        As for :func:`~napari_microml.atoms.finder.find_atoms`, one for all images or one
        each: an STM/AFM scan is levelled as the finder levels it.

    Returns
    -------
    str
        The new model's name, for ``find_atoms(image, model=name)``, the widget and the CLI.
        When the fine-tuned model does not find your held-out points better than ``base``
        does, nothing is saved, a warning says why, and ``base`` is returned.
    """
    import warnings

    result = drain(
        finetune_atoms_iter(
            images,
            positions,
            base=base,
            steps=steps,
            seed=seed,
            name=name,
            validation=validation,
            device=device,
            contrast=contrast,
            scan=scan,
        )
    )
    if result.kept_base:
        warnings.warn(result.reason, stacklevel=2)
    return result.name


# -- proofreading: which points to look at first, and what the user changed ----------------------
def review_order(
    positions, *, features=None, threshold: float = 0.5
) -> tuple[np.ndarray, list[str]]:
    """Return the indices of ``positions`` from least to most certain, and one reason per point.

    Uncertain: a network score near ``threshold`` (within 0.15), a position_std above 0.5 px, or
    a nearest-neighbour distance far from the median (< 0.6× — a doubled or crowded peak — or
    > 1.6×: a gap where a column may be missing). Points without features (added by hand) count
    as certain.

    Parameters
    ----------
    positions : (N, 2) array
        (row, col) in pixels.
    features : pandas.DataFrame, optional
        The finder's per-point features (``score``, ``position_std``), one row per point.
    threshold : float
        The detection threshold the points were found with (0–1).

    Returns
    -------
    order : (N,) int array
        Point indices, least certain first.
    reasons : list of str
        One sentence per point (in the points' order), why it is worth a look.
    """
    from scipy.spatial import cKDTree

    pos = np.asarray(positions, float).reshape(-1, 2)
    n = len(pos)
    if n == 0:
        return np.zeros(0, int), []

    def column(key):
        if features is None or key not in getattr(features, "columns", ()):
            return np.full(n, np.nan)
        return np.asarray(features[key], float)

    score, std = column("score"), column("position_std")
    near = np.clip(1 - np.abs(score - threshold) / 0.15, 0, 1)
    wobbly = np.clip((std - 0.5) / 1.0, 0, 1)
    nn = cKDTree(pos).query(pos, k=2)[0][:, 1] if n > 1 else np.full(n, np.nan)
    ratio = nn / np.nanmedian(nn) if n > 1 else np.ones(n)
    odd = np.clip(np.maximum((0.6 - ratio) / 0.3, (ratio - 1.6) / 0.8), 0, 1)
    parts = np.nan_to_num(np.column_stack([near, wobbly, odd]))
    order = np.argsort(-(parts.max(1) + 0.1 * parts.sum(1)), kind="stable")  # worst sign first
    words = []
    for i in range(n):
        bits = []
        if parts[i, 0] > 0:
            bits.append(f"score {score[i]:.2f} near the threshold {threshold:g}")
        if parts[i, 1] > 0:
            bits.append(f"position uncertain by {std[i]:.1f} px")
        if parts[i, 2] > 0:
            bits.append(f"nearest neighbour {nn[i]:.1f} px (median {np.nanmedian(nn):.1f})")
        words.append("; ".join(bits) or "looks certain")
    return order, words


def count_edits(before, after, *, moved_px: float = 0.5, max_px: float = 3.0) -> dict:
    """Count the points added, removed and moved between two versions of a points layer.

    Parameters
    ----------
    before, after : (N, 2) arrays
        (row, col) in pixels.
    moved_px : float
        A paired point counts as moved when it moved farther than this (px).
    max_px : float
        Points farther apart than this (px) are not paired (Hungarian matching).

    Returns
    -------
    dict
        ``added``, ``removed`` and ``moved`` counts.
    """
    from napari_microml.atoms.metrics import match_points

    before = np.asarray(before, float).reshape(-1, 2)
    after = np.asarray(after, float).reshape(-1, 2)
    pairs = match_points(after, before, max_px)["pairs"]
    shift = np.hypot(*(after[pairs[:, 0]] - before[pairs[:, 1]]).T) if len(pairs) else np.zeros(0)
    return {
        "added": len(after) - len(pairs),
        "removed": len(before) - len(pairs),
        "moved": int((shift > moved_px).sum()),
    }


UNSURE_SCORE = 0.7  # for a model whose threshold is 0.5, a detection below this is unsure
# share of unsure detections that flags an image as unlike the training data: well above what
# simulated lattices read, below what real Pt/C single atoms read (figures in docs/design.md)
UNSURE_SHARE = 0.3
# the shipped model made for isolated atoms with no lattice (Pt single atoms on carbon)
SINGLE_ATOMS_MODEL = "pt-single-atoms"


def unsure_cut(threshold: float) -> float:
    """Return the score below which a detection counts as unsure.

    For a model whose recommended detection threshold is ``threshold``: the same share of the
    range from the threshold to 1 as ``UNSURE_SCORE`` is of the range from 0.5 to 1.
    """
    return threshold + (1.0 - threshold) * (UNSURE_SCORE - 0.5) / 0.5


def unsure_note(result) -> str:
    """Return a status-line sentence when many of the detections are unsure, else ''.

    Many unsure detections mean the image is probably unlike the model's training data; the
    sentence suggests a shipped model made for that kind of image (isolated atoms with no
    lattice: ``pt-single-atoms``), review and fine-tuning. "Unsure" is relative to the model's
    recommended threshold (:func:`unsure_cut`). Not for models fine-tuned on real images, the
    user's or shipped ones: their scores were calibrated on those images, not on the simulated
    lattices the share was set on.

    Parameters
    ----------
    result : AtomsResult
        A result of :func:`~napari_microml.atoms.finder.find_atoms`.

    Returns
    -------
    str
        Starts with a space, so it can be appended to a status line.
    """
    from napari_microml.atoms.finder import lattice_spacing
    from napari_microml.nets.registry import list_models
    from napari_microml.nets.user_models import list_user_models

    features = getattr(result, "features", None)
    if features is None or "score" not in getattr(features, "columns", ()) or len(features) < 5:
        return ""
    name = (getattr(result, "model", None) or {}).get("name")
    if name in list_user_models("atoms"):
        return ""
    shipped = list_models("atoms")
    meta = (shipped.get(name) or {}).get("meta") or {}
    if meta.get("base"):
        return ""
    cut = unsure_cut(float(meta.get("recommended_threshold", 0.5)))
    share = float(np.mean(np.asarray(features["score"], float) < cut))
    if share < UNSURE_SHARE:
        return ""
    advice = ""
    positions = getattr(result, "positions", None)
    suited = SINGLE_ATOMS_MODEL
    if (
        positions is not None
        and f"atoms-{suited}" in shipped
        and name != f"atoms-{suited}"
        and len(positions) >= 8
        and lattice_spacing(positions) is None
    ):
        advice = f"These look like isolated atoms with no lattice: try Model: {suited}, or check "
    else:
        advice = "Check "
    return (
        f" {share:.0%} of the detections are unsure (score < {cut:.2g}): this image looks "
        f"unlike the model's training data. {advice}them (Teach the atom finder → Review) and "
        "fine-tune on a few corrected images."
    )
