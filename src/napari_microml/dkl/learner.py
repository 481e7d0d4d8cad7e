"""Active learning over the pixels of a structure image: :class:`ActiveLearner`, campaigns.

``ActiveLearner`` holds a :class:`~napari_microml.dkl.model.DKLModel` and the measurements so
far; ``suggest(n)`` proposes where to measure next, ``observe(coords, values)`` records the
results, ``predict()`` maps the posterior mean and uncertainty. ``run_campaign`` drives a
whole experiment against a ``measure`` callable (see :mod:`napari_microml.dkl.sources`);
``run_campaign_iter`` is its generator twin for the napari widget (one progress message per
step, ``worker.quit()`` honoured between steps).

Everything is seeded: the same structure, source, parameters and seed give the same
measurement sequence on the same device, whatever torch's thread count: the surrogate's work
runs on one CPU thread (``deterministic=True``, the default), because parallel sums round
differently with each thread count and a campaign amplifies that into other choices.
"""

from __future__ import annotations

import csv
import functools
import json
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_microml.dkl.acquisition import AcquisitionFunction, get_acquisition, select_batch
from napari_microml.dkl.design import INITIAL_DESIGNS, diverse_points
from napari_microml.dkl.ensemble import (
    AUTO_PATCH_SIZES,
    DKLEnsemble,
    MultiScaleEnsemble,
    auto_patch_sizes,
    member_seed,
)
from napari_microml.dkl.model import DKLModel, check_structure, one_thread
from napari_microml.dkl.sources import as_source, check_coords
from napari_microml.dkl.surrogate import Surrogate
from napari_microml.dkl.warping import OutcomeTransform, Warp
from napari_microml.runtime.validate import check_number
from napari_microml.runtime.workers import drain, progress

LOG_FIELDS = ("step", "row", "col", "value", "acquisition", "time_s", "model")


def _deterministic(method):
    """Run a learner method on one thread when the learner is ``deterministic``.

    See :func:`~napari_microml.dkl.model.one_thread`.
    """

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with one_thread(self.deterministic):
            return method(self, *args, **kwargs)

    return run


class ActiveLearner:
    """Suggest-observe loop with a DKL surrogate over every pixel of ``structure``.

    Parameters
    ----------
    structure : (H, W) array
        Structure image (e.g. HAADF); each pixel is a candidate measurement site.
    patch_size : int or "auto"
        Side of the patch (px) around each pixel that the feature extractor sees. ``"auto"``
        builds a multi-scale ensemble instead
        (:class:`~napari_microml.dkl.ensemble.MultiScaleEnsemble`): one member per patch
        side in ``auto_patch_sizes`` (8, 16 and 24 px, clipped to the image; distinct seeds;
        ``n_models`` is then ignored), mixed with weights recomputed after every fit from each
        member's exact-GP leave-one-out log predictive density of the measurements so far
        (softmax, each weight floored at ``auto_floor``). The default, because the useful
        scale depends on the sample and ``"auto"`` finds it from the data at about the cost of
        a 3-network ensemble (figures: ``benchmarks/RESULTS.md``).
    acquisition : str or AcquisitionFunction
        ``ts`` (Thompson sampling, the default: best on the synthetic validation sets of
        ``benchmarks/dkl_tune.py``), ``ei`` (log expected improvement), ``ucb``, ``pi``,
        ``uncertainty`` (pure exploration) or ``random``.
    seed : int
        Seeds random initial points, network initialisation and Thompson samples.
    device : str
        ``auto``, ``cuda``, ``mps`` or ``cpu``.
    maximize : bool
        Look for high (True) or low (False) values.
    features : {"cnn", "pca_mlp", "mlp", "pca", "coords"}
        Feature map of the GP (see :class:`DKLModel`; ``pca``/``coords`` are the non-deep
        baselines).
    n_models : int
        Ensemble size: ``> 1`` averages that many surrogates with different network seeds
        (:class:`~napari_microml.dkl.ensemble.DKLEnsemble`; ignored for ``pca``/``coords``, which
        have no network). Default 3: more found, and a smaller spread over seeds, than one
        network on fresh synthetic validation images, at three times the cost.
    beta, xi : float
        UCB exploration weight (``mean + sqrt(beta) std``) and EI/PI margin (standardised).
    batch_radius : float, optional
        Local-penalisation radius (px) spreading a batch; default ``max(2, patch_size / 4)``
        (2 for ``features="coords"``, which uses no patch).
    recent_radius, n_recent : float, int
        Penalise suggestions within ``recent_radius`` px (0: off, the default) of the last
        ``n_recent`` measurements (10).
    ts_candidates : int
        Size of the candidate subset on which joint Thompson samples are drawn.
    auto_sizes : sequence of int, optional
        Patch sides of the ``"auto"`` members (default 8, 16, 24; clipped to the image).
    auto_temperature, auto_floor : float
        Tempering of the members' LOO scores (nats) and minimum weight per member
        (``"auto"`` only).
    initial : {"diverse", "random"}
        Design of the first points, before any model exists
        (:func:`~napari_microml.dkl.design.diverse_points`): ``"diverse"`` (default) measures
        one pixel per k-means cluster of the structure patches (middle patch size, PCA scores
        plus coordinates; on coordinates alone for ``features="coords"``), so every kind of
        local structure is in the first batch (it found more, with a smaller spread over
        campaigns, on the synthetic validation sets); ``"random"`` draws them uniformly.
        ``acquisition="random"`` always samples uniformly.
    target_warp : {"none", "power", "rank"}
        Monotone warp of the measured values, refitted at every fit, before the GP sees them
        (:mod:`~napari_microml.dkl.warping`): ``"power"`` (Yeo-Johnson) or ``"rank"`` (normal
        scores) make skewed properties look Gaussian; maps are shown in the measurement's units.
        Default "none": the warps found less on fresh synthetic validation sets (with a
        smaller spread over campaigns).
    deterministic : bool
        Run the surrogate (torch and BLAS) on one CPU thread, so a seeded campaign picks the
        same points whatever ``torch.get_num_threads()`` is (default). ``False`` uses every
        thread: faster on many cores, but the points may then depend on the thread count.
    embedding_dim, pca_components : int
        Dimension of the embedding the GP sees, and whitened principal components fed to the
        ``pca_mlp`` network (:class:`DKLModel`; defaults 4 and 16).
    coord_weight : float, optional
        Initial output scale of an additive RBF kernel on (row, col); default 0.3 for
        ``pca_mlp``, 0 otherwise (:class:`DKLModel`).
    kernel : {"rbf", "matern"}
        Stationary kernel on the embedding.
    trend : bool
        Add a linear kernel on the embedding (off by default; :class:`DKLModel`).
    init_iters, warm_iters : int
        Optimiser iterations for the first fit and for each warm-started refit (150, 30).
    lr, nn_lr_scale, weight_decay : float
        Adam learning rate of the GP hyper-parameters (0.02); the network uses
        ``lr * nn_lr_scale`` (0.25) with L2 strength ``weight_decay`` (1e-3).
    chunk : int
        Candidate pixels per prediction batch (8192; bounds memory, not the result).
    """

    def __init__(
        self,
        structure: np.ndarray,
        *,
        patch_size: int | str = "auto",
        acquisition: str | AcquisitionFunction = "ts",
        seed: int = 0,
        device: str = "auto",
        maximize: bool = True,
        features: str = "cnn",
        n_models: int = 3,
        beta: float = 4.0,
        xi: float = 0.0,
        batch_radius: float | None = None,
        recent_radius: float = 0.0,
        n_recent: int = 10,
        ts_candidates: int = 512,
        auto_sizes: Sequence[int] | None = None,
        auto_temperature: float = 1.0,
        auto_floor: float = 0.1,
        initial: str = "diverse",
        target_warp: str = "none",
        deterministic: bool = True,
        embedding_dim: int = 4,
        pca_components: int = 16,
        coord_weight: float | None = None,
        kernel: str = "rbf",
        trend: bool = False,
        init_iters: int = 150,
        warm_iters: int = 30,
        lr: float = 0.02,
        nn_lr_scale: float = 0.25,
        weight_decay: float = 1e-3,
        chunk: int = 8192,
    ) -> None:
        self.deterministic = bool(deterministic)
        outcome = OutcomeTransform(target_warp)  # shared by every member of an ensemble
        sizes: list[int] = []
        check_structure(structure, 1)  # a clear sentence before any shape is used
        seed = check_number(seed, "seed", low=0, integer=True)
        n_models = check_number(n_models, "n_models", low=1, integer=True)
        beta = check_number(beta, "beta (UCB exploration weight)", low=0)
        xi = check_number(xi, "xi (EI/PI margin)")
        if batch_radius is not None:
            batch_radius = check_number(batch_radius, "batch_radius", low=0, unit="pixels")
        recent_radius = check_number(recent_radius, "recent_radius", low=0, unit="pixels")
        n_recent = check_number(n_recent, "n_recent", low=0, integer=True)
        ts_candidates = check_number(ts_candidates, "ts_candidates", low=1, integer=True)
        if initial not in INITIAL_DESIGNS:
            raise ValueError(
                f"initial must be one of {', '.join(INITIAL_DESIGNS)}, not {initial!r}."
            )
        auto = isinstance(patch_size, str)
        if auto and patch_size != "auto":
            raise ValueError(
                f"The patch size must be a number of pixels or 'auto', not {patch_size!r}."
            )
        if isinstance(patch_size, str):  # a radius for batches / the coordinate GP: the middle
            sizes = auto_patch_sizes(np.shape(structure), auto_sizes or AUTO_PATCH_SIZES)
            size = sizes[len(sizes) // 2]
        else:
            size = int(patch_size)
        make = functools.partial(
            DKLModel,
            structure,
            features=features,
            device=device,
            embedding_dim=embedding_dim,
            pca_components=pca_components,
            coord_weight=coord_weight,
            kernel=kernel,
            trend=trend,
            init_iters=init_iters,
            warm_iters=warm_iters,
            lr=lr,
            nn_lr_scale=nn_lr_scale,
            weight_decay=weight_decay,
            chunk=chunk,
            outcome_transform=outcome,
        )
        trainable = features in ("cnn", "mlp", "pca_mlp")  # pca/coords: members would be equal
        self.model: Surrogate
        with one_thread(self.deterministic):  # the PCA features too
            if auto and features != "coords" and len(sizes) > 1:
                members = [
                    make(patch_size=p, seed=member_seed(seed, k)) for k, p in enumerate(sizes)
                ]
                self.model = MultiScaleEnsemble(
                    members, temperature=auto_temperature, floor=auto_floor
                )
            elif int(n_models) > 1 and trainable and not auto:
                self.model = DKLEnsemble(make(patch_size=size, seed=seed), n_models=n_models)
            else:
                self.model = make(patch_size=size, seed=seed)
        self.initial, self._features = initial, features
        self._design_patch = size
        self.shape = self.model.shape
        self.patch_size: int | str = "auto" if auto else size
        self.seed = int(seed)
        self.maximize = bool(maximize)
        self.acquisition_name = (
            acquisition if isinstance(acquisition, str) else type(acquisition).__name__
        )
        self.acquisition = get_acquisition(acquisition, maximize=maximize, beta=beta, xi=xi)
        if batch_radius is None:  # a GP on coordinates has no patch: its radius must not follow one
            batch_radius = 2.0 if features == "coords" else max(2.0, size / 4)
        self.batch_radius = float(batch_radius)
        self.recent_radius, self.n_recent = float(recent_radius), int(n_recent)
        self.ts_candidates = int(ts_candidates)
        self.rng = np.random.default_rng(seed)
        h, w = self.shape
        rr, cc = np.mgrid[0:h, 0:w]
        self.candidates = np.column_stack([rr.ravel(), cc.ravel()])
        self._idx: list[int] = []
        self._val: list[float] = []
        self._dirty = True
        # (mean, std) in GP units over every pixel from the last suggestion, until the next fit
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self._pending: dict[int, float] = {}  # flat index -> acquisition value when suggested
        self.last_acquisition: np.ndarray | None = None
        self.log: list[dict] = []
        self.step = 0
        self._t_last = time.perf_counter()

    # --- data ------------------------------------------------------------------------------
    @property
    def warp(self) -> Warp:
        """The monotone warp of the measured values (part of the model's outcome transform)."""
        return self.model.outcome_transform.warp

    @property
    def n_observed(self) -> int:
        """Number of measurements so far."""
        return len(self._idx)

    @property
    def coords(self) -> np.ndarray:
        """(n, 2) int measured (row, col), in measurement order."""
        return self.candidates[np.asarray(self._idx, int)].reshape(-1, 2)

    @property
    def values(self) -> np.ndarray:
        """(n,) measured values, in measurement order and the measurement's units."""
        return np.asarray(self._val, float)

    @property
    def best_value(self) -> float:
        """Highest (``maximize``) or lowest value measured so far; NaN before any."""
        if not self._val:
            return float("nan")
        return float(np.max(self._val) if self.maximize else np.min(self._val))

    def _flat(self, coords: np.ndarray) -> np.ndarray:
        c = check_coords(coords, self.shape)
        return c[:, 0] * self.shape[1] + c[:, 1]

    @_deterministic
    def _ensure_fit(self):
        if self._dirty and self._idx:
            self.model.fit(np.asarray(self._idx), np.asarray(self._val))
            self._dirty = False
            self._maps = None

    # --- public API ------------------------------------------------------------------------
    def observe(self, coords: np.ndarray, values: np.ndarray) -> None:
        """Record measurements; the model is refitted on the next suggestion or prediction.

        Parameters
        ----------
        coords : (n, 2) int array
            Measured pixels (row, col).
        values : (n,) array
            One finite value per pixel, in any units (spectra: scalarize them first).
        """
        flat = self._flat(coords)
        vals = np.asarray(values, dtype=float)
        if vals.ndim == 2 and vals.shape[0] == len(flat) and vals.shape[1] > 1:
            raise ValueError(
                f"observe() received spectra of shape {vals.shape}; turn them into one value per "
                "point with a scalarizer first."
            )
        vals = vals.reshape(-1)
        if vals.size != flat.size:
            raise ValueError(f"Got {flat.size} coordinates but {vals.size} values.")
        if not np.isfinite(vals).all():
            raise ValueError(
                f"{int((~np.isfinite(vals)).sum())} measured value(s) are NaN or inf; the model "
                "needs finite numbers (check the scalarizer window or the detector)."
            )
        now = time.perf_counter()
        dt = now - self._t_last
        self._t_last = now
        self.step += 1
        summary = self.model.state.as_dict() if self.model.state is not None else None
        for i, v in zip(flat, vals, strict=True):
            self._idx.append(int(i))
            self._val.append(float(v))
            self.log.append(
                {
                    "step": self.step,
                    "row": int(i // self.shape[1]),
                    "col": int(i % self.shape[1]),
                    "value": float(v),
                    "acquisition": self._pending.pop(int(i), float("nan")),
                    "time_s": round(dt, 4),
                    "model": summary,
                }
            )
        self._pending.clear()
        self._dirty = True

    @_deterministic
    def _design(self, n: int, available: np.ndarray) -> np.ndarray:
        """Flat indices of ``n`` points chosen before a model exists.

        The ``initial`` design; uniform for ``acquisition="random"``.
        """
        if self.initial == "diverse" and self.acquisition is not None:
            return diverse_points(
                self.model.image,
                n,
                self.rng,
                available=available,
                patch_size=self._design_patch,
                features=self._features,
            )
        pool = np.flatnonzero(available)
        return self.rng.choice(pool, size=min(n, len(pool)), replace=False)

    @_deterministic
    def suggest(self, n: int = 1) -> np.ndarray:
        """Propose where to measure next.

        Before two measurements exist the ``initial`` design answers; afterwards the
        acquisition function on the surrogate's posterior, spread over a batch by local
        penalisation (``batch_radius``).

        Parameters
        ----------
        n : int
            Number of points.

        Returns
        -------
        (n, 2) int array
            Pixel coordinates (row, col) not measured yet (fewer if fewer remain).
        """
        n = check_number(n, "The number of points to suggest", low=1, integer=True)
        available = np.ones(len(self.candidates), bool)
        available[np.asarray(self._idx, int)] = False
        if not available.any():
            raise ValueError("Every pixel has been measured already.")
        if self.acquisition is None or len(self._idx) < 2:
            chosen = self._design(n, available)
            self._pending = {int(i): float("nan") for i in chosen}
            self.last_acquisition = None
            return self.candidates[chosen].copy()
        self._ensure_fit()
        mean, std = self.model.predict(standardized=True)
        self._maps = (mean, std)  # predict() reuses them until the next fit
        best_raw = self.best_value
        best = float(self.model.outcome_transform.forward(np.asarray(best_raw)))
        on = self.recent_radius > 0 and self.n_recent > 0  # coords[-0:] would be every point
        recent = self.coords[-self.n_recent :] if on else None
        if self.acquisition.needs_samples:
            ucb = (mean if self.maximize else -mean) + 2 * std
            ucb[~available] = -np.inf
            pool = np.flatnonzero(available)
            k = min(self.ts_candidates, len(pool))
            top = np.argsort(-ucb)[: k // 2]
            rest = np.setdiff1d(pool, top)
            extra = self.rng.choice(rest, size=min(k - len(top), len(rest)), replace=False)
            subset = np.union1d(top, extra)
            samples = self.model.sample(subset, max(n, 1), self.rng)
            sub_scores = self.acquisition(mean[subset], std[subset], best, samples=samples)
            scores = np.full((sub_scores.shape[0], len(self.candidates)), -np.inf)
            scores[:, subset] = sub_scores
            acq_map = scores[0]
        else:
            scores = self.acquisition(mean, std, best)
            acq_map = scores
        chosen = select_batch(
            scores,
            self.candidates,
            n,
            available=available,
            radius=self.batch_radius,
            recent=recent,
            recent_radius=self.recent_radius,
        )
        acq_display = np.where(available & np.isfinite(acq_map), acq_map, np.nan)
        self.last_acquisition = acq_display.reshape(self.shape)
        self._pending = {int(i): float(acq_map[i]) for i in chosen}
        return self.candidates[chosen].copy()

    @_deterministic
    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """Map the surrogate's posterior over every pixel.

        Returns
        -------
        mean, std : (H, W) float arrays
            Posterior mean and standard deviation, in the measurement's units.
        """
        if not self._idx:
            raise ValueError("No measurements yet: observe some points before predicting.")
        self._ensure_fit()
        if self._maps is not None:  # the last suggestion's prediction, same fit: no second pass
            mean, std = self.model.outcome_transform.untransform(*self._maps)
        else:
            mean, std = self.model.predict()
        return mean.reshape(self.shape), std.reshape(self.shape)

    def state_summary(self) -> dict:
        """Summarise the fitted surrogate (:class:`~napari_microml.dkl.surrogate.ModelState`).

        Returns
        -------
        dict
            Length-scales, output scale, noise, marginal log-likelihood...; empty before
            any measurement.
        """
        self._ensure_fit()
        return {} if self.model.state is None else self.model.state.as_dict()

    # --- log -------------------------------------------------------------------------------
    def log_records(self) -> list[dict]:
        """Return the campaign's log, one dict per measured point, oldest first.

        Returns
        -------
        list of dict
            Copies of the log entries, keyed as :data:`LOG_FIELDS`: ``step`` (the
            :meth:`observe` call, from 1), ``row`` and ``col`` (px), ``value`` (as observed),
            ``acquisition`` (the acquisition value when the point was suggested; NaN for
            design points and points that were not suggested), ``time_s`` (seconds since the
            previous :meth:`observe` or the learner's creation) and ``model`` (the surrogate's
            state summary, None before the first fit).
        """
        return [dict(r) for r in self.log]

    def export_log(self, path: str | Path) -> Path:
        """Write the log as CSV (``.csv``) or JSON (anything else, with the parameters).

        Parameters
        ----------
        path : str or Path
            The file to write (replaced whole, only once the new one is complete).

        Returns
        -------
        Path
            ``path``.
        """
        from napari_microml.io.writer import staged

        path = Path(path)
        rows = self.log_records()
        if path.suffix.lower() == ".csv":
            with staged(path) as tmp, open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
                writer.writeheader()
                for r in rows:
                    writer.writerow({**r, "model": json.dumps(r["model"])})
        else:
            meta = {
                "acquisition": self.acquisition_name,
                "seed": self.seed,
                "patch_size": self.patch_size,
                "maximize": self.maximize,
                "features": self.model.features,
                "shape": list(self.shape),
                "target_warp": self.warp.name,
                "deterministic": self.deterministic,
                "torch_threads": 1 if self.deterministic else _torch_threads(),
            }
            with staged(path) as tmp:
                Path(tmp).write_text(json.dumps({"parameters": meta, "log": rows}, indent=1))
        return path


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@dataclass
class CampaignResult:
    """Outcome of :func:`run_campaign` (all in measurement order).

    Attributes
    ----------
    coords : (N, 2) int array
        Measured pixels (row, col).
    values : (N,) float array
        Measured values, in the measurement's units.
    best_so_far : (N,) float array
        Best value after each measurement.
    log : list of dict
        One record per measurement (:meth:`ActiveLearner.log_records`).
    learner : ActiveLearner
        The learner, to continue the campaign or map its posterior.
    device : str
        The device the surrogate ran on, in words.
    provenance : dict
        Tool, version, parameters, seed and device (as every tool's result).
    """

    coords: np.ndarray
    values: np.ndarray
    best_so_far: np.ndarray
    log: list = field(default_factory=list)
    learner: ActiveLearner | None = None
    device: str = ""
    provenance: dict = field(default_factory=dict)

    def export_log(self, path: str | Path) -> Path:
        """Write the campaign's log (:meth:`ActiveLearner.export_log`); return the path."""
        if self.learner is None:
            raise ValueError("This campaign result has no learner to export the log of.")
        return self.learner.export_log(path)


def _measure_values(source, coords, scalarizer):
    out = np.asarray(source(coords), float)
    if out.ndim == 2 and out.shape[1] > 1:
        if scalarizer is None:
            raise ValueError(
                "The source returned spectra; pass a scalarizer (e.g. PeakArea(window, axis=...)) "
                "to turn each spectrum into one value."
            )
        out = np.asarray(scalarizer(out), float)
    return out.reshape(-1)


def run_campaign_iter(
    structure: np.ndarray,
    measure: Callable | np.ndarray,
    *,
    budget: int,
    n_initial: int,
    acquisition: str | AcquisitionFunction = "ts",
    batch_size: int = 1,
    seed: int = 0,
    scalarizer: Callable | None = None,
    callback: Callable | None = None,
    learner: ActiveLearner | None = None,
    patch_size: int | str = "auto",
    device: str = "auto",
    maximize: bool = True,
    features: str = "cnn",
    n_models: int = 3,
    beta: float = 4.0,
    xi: float = 0.0,
    batch_radius: float | None = None,
    recent_radius: float = 0.0,
    n_recent: int = 10,
    ts_candidates: int = 512,
    auto_sizes: Sequence[int] | None = None,
    auto_temperature: float = 1.0,
    auto_floor: float = 0.1,
    initial: str = "diverse",
    target_warp: str = "none",
    deterministic: bool = True,
    embedding_dim: int = 4,
    pca_components: int = 16,
    coord_weight: float | None = None,
    kernel: str = "rbf",
    trend: bool = False,
    init_iters: int = 150,
    warm_iters: int = 30,
    lr: float = 0.02,
    nn_lr_scale: float = 0.25,
    weight_decay: float = 1e-3,
    chunk: int = 8192,
) -> Generator[Any, None, CampaignResult]:
    """Run an active-learning campaign step by step (the generator twin of :func:`run_campaign`).

    The napari widget drives this generator on a worker thread: between two steps it may stop
    (``worker.quit()``), and a stopped campaign keeps the steps measured so far.

    Parameters
    ----------
    structure, measure, budget, n_initial, acquisition, batch_size, seed, scalarizer, \
callback, learner, patch_size, device, maximize, features, n_models, beta, xi, batch_radius, \
recent_radius, n_recent, ts_candidates, auto_sizes, auto_temperature, auto_floor, initial, \
target_warp, deterministic, embedding_dim, pca_components, coord_weight, kernel, trend, \
init_iters, warm_iters, lr, nn_lr_scale, weight_decay, chunk
        As :func:`run_campaign`.

    Yields
    ------
    progress
        ``progress(measured, budget, message)`` after every step
        (:func:`napari_microml.runtime.workers.progress`).

    Returns
    -------
    CampaignResult
        As :func:`run_campaign` (the generator's return value).
    """
    from napari_microml.runtime.device import describe_device
    from napari_microml.runtime.provenance import make_provenance

    # the learner's keywords, also recorded in the provenance
    options: dict[str, Any] = dict(
        patch_size=patch_size,
        device=device,
        maximize=maximize,
        features=features,
        n_models=n_models,
        beta=beta,
        xi=xi,
        batch_radius=batch_radius,
        recent_radius=recent_radius,
        n_recent=n_recent,
        ts_candidates=ts_candidates,
        auto_sizes=auto_sizes,
        auto_temperature=auto_temperature,
        auto_floor=auto_floor,
        initial=initial,
        target_warp=target_warp,
        deterministic=deterministic,
        embedding_dim=embedding_dim,
        pca_components=pca_components,
        coord_weight=coord_weight,
        kernel=kernel,
        trend=trend,
        init_iters=init_iters,
        warm_iters=warm_iters,
        lr=lr,
        nn_lr_scale=nn_lr_scale,
        weight_decay=weight_decay,
        chunk=chunk,
    )
    if learner is not None:  # a learner carried over keeps its own settings
        options = dict(learner="given", patch_size=learner.patch_size, maximize=learner.maximize)
    else:
        learner = ActiveLearner(structure, acquisition=acquisition, seed=seed, **options)
    source = as_source(measure, learner.shape, scalarizer=scalarizer)
    n_sites = learner.shape[0] * learner.shape[1]
    budget = check_number(budget, "budget (number of measurements)", low=1, integer=True)
    n_initial = check_number(
        n_initial, "n_initial (first measurements before the model)", low=1, integer=True
    )
    batch_size = check_number(batch_size, "batch_size (points per step)", low=1, integer=True)
    if n_initial > budget:
        raise ValueError(f"n_initial ({n_initial}) cannot exceed the budget ({budget}).")
    if budget > n_sites:
        raise ValueError(f"The budget ({budget}) exceeds the {n_sites} pixels of the image.")
    while learner.n_observed < budget:
        first = learner.n_observed == 0
        q = n_initial if first else min(batch_size, budget - learner.n_observed)
        if first:  # the learner's initial design (``initial``: random or diverse)
            coords = learner.candidates[learner._design(q, np.ones(n_sites, bool))]
        else:
            coords = learner.suggest(q)
        values = _measure_values(source, coords, scalarizer)
        learner.observe(coords, values)
        if callback is not None:
            callback(learner.step, learner, coords, values)
        yield progress(
            learner.n_observed,
            budget,
            f"step {learner.step}: {learner.n_observed}/{budget} measured, "
            f"best {learner.best_value:.4g}",
        )
    vals = learner.values
    best = np.maximum.accumulate(vals) if learner.maximize else np.minimum.accumulate(vals)
    device_label = describe_device(learner.model.device)
    params = dict(
        budget=budget,
        n_initial=n_initial,
        batch_size=batch_size,
        acquisition=learner.acquisition_name,
        scalarizer=scalarizer,
        **options,
    )
    return CampaignResult(
        coords=learner.coords,
        values=vals,
        best_so_far=best,
        log=learner.log_records(),
        learner=learner,
        device=device_label,
        provenance=make_provenance(
            "dkl_campaign", parameters=params, device=device_label, seed=learner.seed
        ),
    )


def run_campaign(
    structure: np.ndarray,
    measure: Callable | np.ndarray,
    *,
    budget: int,
    n_initial: int,
    acquisition: str | AcquisitionFunction = "ts",
    batch_size: int = 1,
    seed: int = 0,
    scalarizer: Callable | None = None,
    callback: Callable | None = None,
    learner: ActiveLearner | None = None,
    patch_size: int | str = "auto",
    device: str = "auto",
    maximize: bool = True,
    features: str = "cnn",
    n_models: int = 3,
    beta: float = 4.0,
    xi: float = 0.0,
    batch_radius: float | None = None,
    recent_radius: float = 0.0,
    n_recent: int = 10,
    ts_candidates: int = 512,
    auto_sizes: Sequence[int] | None = None,
    auto_temperature: float = 1.0,
    auto_floor: float = 0.1,
    initial: str = "diverse",
    target_warp: str = "none",
    deterministic: bool = True,
    embedding_dim: int = 4,
    pca_components: int = 16,
    coord_weight: float | None = None,
    kernel: str = "rbf",
    trend: bool = False,
    init_iters: int = 150,
    warm_iters: int = 30,
    lr: float = 0.02,
    nn_lr_scale: float = 0.25,
    weight_decay: float = 1e-3,
    chunk: int = 8192,
) -> CampaignResult:
    """Run a full active-learning campaign.

    Parameters
    ----------
    structure : (H, W) array
        Structure image (e.g. HAADF), any real units; each pixel is a candidate site.
    measure : callable or array
        ``measure(coords (n, 2) int) -> (n,) values`` (or ``(n, E)`` spectra with
        ``scalarizer=``); a 2D array is replayed as a scalar map, a 3D (H, W, E) array as a
        spectrum image.
    budget : int
        Total number of measurements, the ``n_initial`` random ones included.
    n_initial : int
        Measurements of the initial design (``initial``) before the model is used.
    acquisition : str or AcquisitionFunction
        ``ts`` (default), ``ei``, ``ucb``, ``pi``, ``uncertainty`` or ``random`` (see
        :class:`ActiveLearner`).
    batch_size : int
        Points measured per step after the initial design.
    seed : int
        Seeds the initial design, the networks and Thompson samples: the same seed, inputs and
        device give the same measurement sequence.
    scalarizer : callable, optional
        Turns ``(n, E)`` spectra from ``measure`` into ``(n,)`` values (e.g. ``PeakArea``).
    callback : callable, optional
        ``callback(step, learner, coords, values)`` after every step.
    learner : ActiveLearner, optional
        Continue with this learner; the learner keywords below are then ignored.
    patch_size, device, maximize, features, n_models, beta, xi, batch_radius, recent_radius, \
n_recent, ts_candidates, auto_sizes, auto_temperature, auto_floor, initial, target_warp, \
deterministic, embedding_dim, pca_components, coord_weight, kernel, trend, init_iters, \
warm_iters, lr, nn_lr_scale, weight_decay, chunk
        The :class:`ActiveLearner` keywords, same meanings (pixels for sizes and radii) and
        defaults.

    Returns
    -------
    CampaignResult
        ``coords`` (N, 2) int (row, col) px, ``values`` (N,), ``best_so_far`` (N,), ``log``
        and ``provenance`` (tool, version, parameters, seed, device).
    """
    return drain(
        run_campaign_iter(
            structure,
            measure,
            budget=budget,
            n_initial=n_initial,
            acquisition=acquisition,
            batch_size=batch_size,
            seed=seed,
            scalarizer=scalarizer,
            callback=callback,
            learner=learner,
            patch_size=patch_size,
            device=device,
            maximize=maximize,
            features=features,
            n_models=n_models,
            beta=beta,
            xi=xi,
            batch_radius=batch_radius,
            recent_radius=recent_radius,
            n_recent=n_recent,
            ts_candidates=ts_candidates,
            auto_sizes=auto_sizes,
            auto_temperature=auto_temperature,
            auto_floor=auto_floor,
            initial=initial,
            target_warp=target_warp,
            deterministic=deterministic,
            embedding_dim=embedding_dim,
            pca_components=pca_components,
            coord_weight=coord_weight,
            kernel=kernel,
            trend=trend,
            init_iters=init_iters,
            warm_iters=warm_iters,
            lr=lr,
            nn_lr_scale=nn_lr_scale,
            weight_decay=weight_decay,
            chunk=chunk,
        )
    )
