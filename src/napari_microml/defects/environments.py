"""Classes of local atomic environments, learned without labels (after Maksov et al., 2019).

Every atom gets a descriptor of the image around it; the descriptors are reduced by PCA and
modelled by a Gaussian mixture whose number of classes is chosen by BIC (or set by the user).
Each atom receives a class, the posterior probability of that class and an *unusualness*: its
negative log-likelihood (nats) under the fitted density, so atoms unlike anything common stand
out even for defect types no network was trained on.

Descriptors (``descriptor=``):

* ``"rings"`` (default): the image is sampled on circles around the atom (radius 0 … half the
  patch, ~1 px apart, 32 angles) and each circle is summarised by the magnitudes of its angular
  Fourier coefficients m = 0…6. Magnitudes do not change when the surroundings rotate, so a
  column next to a vacancy is one class whichever neighbour is missing, and rotated grains share
  classes.
* ``"patch"``: the raw square patch (as in Maksov et al.); orientation-specific.

Borders: a ring sample that falls outside the image is taken from the point opposite through
the atom (exact for centrosymmetric environments: every Bravais lattice, perovskite
projections), otherwise from the mirrored image (reflect padding). Atoms whose window reaches
past the border (``edge``) are classified but not used to fit the model, nor flagged unusual.

The density is that of probabilistic PCA + mixture: the mixture lives on the whitened leading
components and the rest of the descriptor is isotropic noise with the mean discarded variance,
so an atom that differs in a direction PCA did not keep is still unusual.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.validate import (
    as_scaled_stack,
    check_number,
    check_positions,
    fill_nonfinite,
)
from napari_microml.runtime.workers import drain, progress

if TYPE_CHECKING:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

DESCRIPTORS = ("rings", "patch")
N_ANGLES, N_HARMONICS = 32, 6
CHUNK = 1024  # atoms sampled between two cancel points


@dataclass
class EnvironmentModel:
    """A fitted descriptor → PCA → mixture pipeline; reusable on other images via ``score``."""

    descriptor: str
    patch_size: int
    pca: PCA
    gmm: GaussianMixture
    order: np.ndarray  # mixture component of class i
    noise_var: float  # variance per discarded PCA direction
    threshold: float  # unusualness above this is flagged
    unusual_k: float = 4.0

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classes (N,), class probability (N,) and unusualness (N,) NLL in nats."""
        z = self.pca.transform(features)
        recon = self.pca.inverse_transform(z)
        resid2 = ((features - recon) ** 2).sum(1)
        n_rest = features.shape[1] - z.shape[1]
        nll = -self.gmm.score_samples(z) + 0.5 * np.log(self.pca.explained_variance_).sum()
        if n_rest > 0:
            nll += 0.5 * resid2 / self.noise_var + 0.5 * n_rest * np.log(2 * np.pi * self.noise_var)
        post = self.gmm.predict_proba(z)[:, self.order]
        return post.argmax(1), post.max(1), nll


@dataclass
class EnvironmentsResult:
    """Per-atom environment classes, as :func:`classify_environments` returns them.

    Attributes
    ----------
    classes : (N,) int
        0 … n_classes-1, ordered from the most to the least common class.
    probability : (N,) float
        Posterior probability of the assigned class.
    unusualness : (N,) float
        Negative log-likelihood (nats) under the fitted density; higher = more unusual.
    unusual : (N,) bool
        ``unusualness > median + unusual_k × 1.4826 × MAD`` of the fitted atoms, and not
        ``edge``.
    n_classes : int
        Number of classes fitted.
    bic : dict
        ``{k: BIC}`` for every number of classes k tried.
    patch_size : int
        Side of the atom-centred window (px, odd).
    explained_variance : (n_pca,) float
        Fraction of descriptor variance per kept PCA component.
    edge : (N,) bool
        The atom's window reaches past the image border (the missing part is filled by
        symmetry, see the module docstring); edge atoms are classified but not used to fit and
        never flagged unusual.
    provenance : dict
        Tool, version, parameters and seed (as every tool's result).
    model : EnvironmentModel
        The fitted pipeline; :meth:`apply` reuses it on another image.
    """

    classes: np.ndarray
    probability: np.ndarray
    unusualness: np.ndarray
    unusual: np.ndarray
    n_classes: int
    bic: dict
    patch_size: int
    explained_variance: np.ndarray
    edge: np.ndarray
    provenance: dict = field(default_factory=dict)
    model: EnvironmentModel | None = None

    def apply(self, image, positions, *, threshold: str = "image") -> EnvironmentsResult:
        """Classify the atoms of another image with this fitted model (same classes).

        E.g. fit on a clean reference and look for new defect types there.

        Parameters
        ----------
        image : (H, W) or (T, H, W) array
            The other micrograph (or stack).
        positions : (N, 2) or (N, 3) array
            Its atom centres in pixels, (row, col); for a stack (frame, row, col).
        threshold : {"image", "reference"}
            ``"image"`` (default) flags atoms that are unusual relative to the other atoms of
            *this* image (median + k·MAD of its own scores), which absorbs small dose or scale
            differences between images; ``"reference"`` reuses the reference image's cut.

        Returns
        -------
        EnvironmentsResult
            The same classes as this result, for the new atoms.
        """
        m = self.model
        if m is None:
            raise ValueError("This result carries no fitted model to apply.")
        if threshold not in ("image", "reference"):
            raise ValueError(f"threshold must be 'image' or 'reference', not {threshold!r}.")
        stack, is_stack = _scaled(image)
        pos, frames = check_positions(
            positions, stack.shape, n_frames=len(stack), is_stack=is_stack
        )
        if len(pos) == 0:
            raise ValueError("No atom positions were given to classify.")
        cls, prob, nll = m.score(describe(stack, pos, frames, m.patch_size, m.descriptor))
        edge = near_edge(pos, stack.shape[1:], m.patch_size)
        own = nll[~edge] if (~edge).any() else nll
        cut = m.threshold if threshold == "reference" else _robust_cut(own, m.unusual_k)
        return EnvironmentsResult(
            cls,
            prob,
            nll,
            (nll > cut) & ~edge,
            self.n_classes,
            self.bic,
            m.patch_size,
            self.explained_variance,
            edge,
            dict(self.provenance),
            m,
        )


def _robust_cut(nll: np.ndarray, k: float) -> float:
    """Return median + k × 1.4826 × MAD: a robust z-score above ``k``."""
    med = np.median(nll)
    return float(med + k * max(1.4826 * np.median(np.abs(nll - med)), 1e-9))


def _scaled(image) -> tuple[np.ndarray, bool]:
    """Check the image (stack) and map it to 0–1 in float64.

    The descriptors are then the same whatever the image's units.
    """
    scaled = as_scaled_stack(image, what="image")
    return scaled.stack, scaled.is_stack


def near_edge(positions: np.ndarray, shape: tuple, patch_size: int) -> np.ndarray:
    """(N,) bool: the atom's window of side ``patch_size`` px reaches outside ``shape``."""
    half = patch_size // 2
    hw = np.asarray(shape[-2:], float)
    return np.asarray(((positions < half) | (positions > hw - 1 - half)).any(1))


def auto_patch_size(positions: np.ndarray, frames: np.ndarray) -> int:
    """Odd patch side (px) ≈ 2 × the median nearest-neighbour distance + 1, at least 7 px.

    The first shell of neighbours sits on its rim; further shells barely reach in.
    """
    from scipy.spatial import cKDTree

    nn = []
    for f in np.unique(frames):
        p = positions[frames == f]
        if len(p) >= 2:
            nn.append(cKDTree(p).query(p, k=2)[0][:, 1])
    if not nn:
        raise ValueError(
            "Need at least two atoms in a frame to estimate the lattice spacing; "
            "give patch_size explicitly."
        )
    d = float(np.median(np.concatenate(nn)))
    return int(2 * max(3, round(d)) + 1)


def smooth_wide(f: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with a wide ``sigma`` (px), computed on a grid ~sigma/4 coarser.

    Interpolated back, the slow background matches the full filter to well under the noise,
    in far less time holding the interpreter (scipy.ndimage keeps the GIL, freezing napari).
    """
    from scipy import ndimage as ndi

    from napari_microml.atoms.refine import block_reduce, upsample_linear

    k = int(max(1, min(sigma // 4, min(f.shape) // 8)))
    if k == 1:
        return ndi.gaussian_filter(f, sigma, mode="reflect")
    coarse = ndi.gaussian_filter(
        block_reduce(f, k=k, ufunc=np.add) / k**2, sigma / k, mode="reflect"
    )
    return upsample_linear(coarse, step=k, shape=f.shape, offset=(k - 1) / 2)


def _prepared(frame: np.ndarray, patch: int, centres: np.ndarray) -> np.ndarray:
    """Remove the frame's slow background and median, and divide by the typical column height.

    The median is the space between columns; the column height is the 10 %-trimmed mean at
    ``centres``, so rare bright or extra atoms barely change the scale between images.
    """
    from scipy import ndimage as ndi
    from scipy.stats import trim_mean

    f = fill_nonfinite(np.asarray(frame)).astype(np.float64)
    f = f - smooth_wide(f, 2.0 * patch)
    f -= np.median(f)
    peaks = (
        ndi.map_coordinates(f, centres.T, order=1, mode="nearest") if len(centres) else np.zeros(0)
    )
    scale = trim_mean(peaks, 0.1) if len(peaks) else 0.0
    tiny = 1e-9 * float(np.abs(f).max())  # relative: no floor in the data's units
    if not scale > tiny:  # dark columns or no atoms: fall back to the robust spread
        scale = max(1.4826 * np.median(np.abs(f)), f.std())
    return f / scale if scale > tiny else f


def describe(
    stack: np.ndarray,
    positions: np.ndarray,
    frames: np.ndarray,
    patch_size: int,
    descriptor: str = "rings",
) -> np.ndarray:
    """Descriptors (N, F) of the atoms at ``positions`` (N, 2) px in ``stack`` (T, H, W).

    Sub-pixel bilinear sampling; outside the image the frame is mirrored (reflect padding).
    """
    return drain(_describe_iter(stack, positions, frames, patch_size, descriptor))


def _describe_iter(
    stack: np.ndarray,
    positions: np.ndarray,
    frames: np.ndarray,
    patch_size: int,
    descriptor: str = "rings",
) -> Generator[tuple, None, np.ndarray]:
    """:func:`describe` as a generator: yields progress per frame and per ``CHUNK`` atoms."""
    from scipy import ndimage as ndi

    half = patch_size // 2
    if descriptor == "rings":
        radii = np.linspace(0, half, min(half, 16) + 1)
        theta = np.linspace(0, 2 * np.pi, N_ANGLES, endpoint=False)
        off = np.stack(
            [np.outer(radii, np.sin(theta)), np.outer(radii, np.cos(theta))], -1
        ).reshape(-1, 2)
    elif descriptor == "patch":
        g = np.arange(-half, half + 1, dtype=float)
        off = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    else:
        raise ValueError(f"Unknown descriptor {descriptor!r}; choose from {DESCRIPTORS}.")
    out = np.zeros((len(positions), len(off)))
    uniq = np.unique(frames)
    total = len(uniq) + sum(-(-int((frames == f).sum()) // CHUNK) for f in uniq)
    done = 0
    for f in uniq:
        idx = np.flatnonzero(frames == f)
        img = _prepared(stack[f], patch_size, positions[idx])
        done += 1
        yield progress(done, total, f"environments: descriptors, frame {f + 1}")
        hw = np.array(img.shape, float) - 1
        for start in range(0, len(idx), CHUNK):  # sampling is per point: chunks change nothing
            sel = idx[start : start + CHUNK]
            coords = positions[sel][:, None, :] + off[None]
            if descriptor == "rings":  # past the border: use the point opposite through the atom
                out_ = ((coords < 0) | (coords > hw)).any(-1, keepdims=True)
                mirror = positions[sel][:, None, :] - off[None]
                coords = np.where(
                    out_ & ~((mirror < 0) | (mirror > hw)).any(-1, keepdims=True), mirror, coords
                )
            out[sel] = ndi.map_coordinates(
                img, coords.reshape(-1, 2).T, order=1, mode="reflect"
            ).reshape(len(sel), len(off))
            done += 1
            yield progress(
                done, total, f"environments: descriptors, {start + len(sel)}/{len(idx)} atoms"
            )
    if descriptor == "patch":
        return out
    rings = out.reshape(len(positions), len(radii), N_ANGLES)
    mags = np.abs(np.fft.rfft(rings, axis=2))[:, :, : N_HARMONICS + 1] / N_ANGLES
    return np.concatenate([mags[:, 0, :1], mags[:, 1:].reshape(len(positions), -1)], 1)


def _fit(
    feats: np.ndarray,
    *,
    descriptor,
    patch_size,
    n_pca,
    n_classes,
    max_classes,
    covariance,
    n_init,
    seed,
    min_class_size,
    unusual_k,
) -> Generator[tuple, None, tuple[EnvironmentModel, dict]]:
    """PCA (whitened) + Gaussian mixtures for every candidate k; the BIC-best eligible one.

    A generator: yields ``("fit", k, n_candidates)`` after each mixture (a cancel point).
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    n = len(feats)
    limit = max(1, min(feats.shape[1], n - 1))
    full = PCA(n_components=limit, random_state=seed).fit(feats)
    pca = PCA(n_components=min(n_pca, limit), whiten=True, random_state=seed).fit(feats)
    rest = full.explained_variance_[pca.n_components_ :]
    noise_var = float(
        max(rest.mean() if len(rest) else 0.0, 1e-6 * full.explained_variance_[0], 1e-12)
    )
    z = pca.transform(feats)
    ks = (
        [int(n_classes)]
        if n_classes is not None
        else list(range(1, max(1, min(max_classes, n // 5)) + 1))
    )
    bic, fits, eligible = {}, {}, []
    for i, k in enumerate(ks):
        gmm = GaussianMixture(
            k,
            covariance_type=covariance,
            n_init=n_init,
            random_state=seed,
            reg_covar=1e-3,
            max_iter=300,
        ).fit(z)
        bic[k], fits[k] = float(gmm.bic(z)), gmm
        if (
            n_classes is not None
            or np.bincount(gmm.predict(z), minlength=k).min() >= min_class_size
        ):
            eligible.append(k)
        yield ("fit", i + 1, len(ks))
    # a class of a handful of outliers would make them look ordinary: such k are not chosen
    gmm = fits[min(eligible or [ks[0]], key=lambda k: bic[k])]
    order = np.argsort(-gmm.weights_, kind="stable")
    return EnvironmentModel(
        descriptor, patch_size, pca, gmm, order, noise_var, np.inf, unusual_k
    ), bic


def _fit_pass(
    feats: np.ndarray, which: int, settings: dict
) -> Generator[tuple, None, tuple[EnvironmentModel, dict]]:
    """Run :func:`_fit` one mixture at a time, each under one BLAS thread, as progress."""
    from threadpoolctl import threadpool_limits

    gen = _fit(feats, **settings)
    while True:
        with threadpool_limits(1):  # small matrices: threads only contend (and oversubscribe)
            try:
                _, k, n_k = next(gen)
            except StopIteration as stop:
                return stop.value
        yield progress(k, n_k, f"environments, pass {which}: mixture {k}/{n_k}")


def classify_environments(
    image,
    positions,
    *,
    patch_size: int | None = None,
    n_classes: int | None = None,
    max_classes: int = 8,
    n_pca: int | None = None,
    seed: int = 0,
    descriptor: str = "rings",
    covariance: str = "auto",
    n_init: int = 3,
    unusual_k: float = 4.0,
    min_class_size: int | None = None,
) -> EnvironmentsResult:
    """Cluster atoms by their local environment and score how unusual each one is.

    Parameters
    ----------
    image : (H, W) or (T, H, W) array
        The micrograph (or stack) the atoms were found in.
    positions : (N, 2) or (N, 3) array
        Atom centres in pixels, (row, col); for a stack (frame, row, col).
    patch_size : int, optional
        Side of the atom-centred window in px (made odd); default ≈ 2 × the median
        nearest-neighbour distance.
    n_classes : int, optional
        Number of classes; default chosen by BIC among 1 … ``max_classes``.
    max_classes : int
        Largest number of classes BIC may choose (also at most one class per five atoms).
    n_pca : int, optional
        PCA components kept (default 4: fewer merge subtle classes, more split noise).
    seed : int
        Seeds PCA and the mixture (results are reproducible).
    descriptor : {"rings", "patch"}
        Rotation-invariant ring spectra (default) or raw patches (see module docstring).
    covariance : {"auto", "full", "diag"}
        Mixture covariances; "auto" uses full ones when there are ≥ 10 atoms per parameter.
    n_init : int
        Mixture restarts per number of classes (best kept).
    unusual_k : float
        ``unusual`` = unusualness above median + ``unusual_k`` × 1.4826 × MAD (robust z > k).
    min_class_size : int, optional
        When BIC chooses, numbers of classes that leave a class with fewer atoms than this are
        skipped, so a few odd atoms stay unusual instead of getting a class of their own
        (default max(8, 2 % of the atoms)).

    Returns
    -------
    EnvironmentsResult
        Per-atom ``classes``, ``probability``, ``unusualness`` (nats), ``unusual`` and ``edge``
        (each (N,)), the BIC table, the fitted ``model`` (reusable with ``apply``) and
        ``provenance``.

    Raises
    ------
    ValueError
        Bad image or position shapes, positions outside the frames, or too few atoms.
    """
    return drain(
        classify_environments_iter(
            image,
            positions,
            patch_size=patch_size,
            n_classes=n_classes,
            max_classes=max_classes,
            n_pca=n_pca,
            seed=seed,
            descriptor=descriptor,
            covariance=covariance,
            n_init=n_init,
            unusual_k=unusual_k,
            min_class_size=min_class_size,
        )
    )


def classify_environments_iter(
    image,
    positions,
    *,
    patch_size: int | None = None,
    n_classes: int | None = None,
    max_classes: int = 8,
    n_pca: int | None = None,
    seed: int = 0,
    descriptor: str = "rings",
    covariance: str = "auto",
    n_init: int = 3,
    unusual_k: float = 4.0,
    min_class_size: int | None = None,
) -> Generator[tuple, None, EnvironmentsResult]:
    """:func:`classify_environments` as a generator, for a worker that can be cancelled.

    It takes the same parameters as :func:`classify_environments` and gives the same result.

    Yields
    ------
    tuple
        ``("progress", done, total, message)`` per frame and per 1024 atoms while the
        descriptors are sampled, and after every mixture fitted (one per candidate number of
        classes, in each of the two passes); stopping the generator there cancels the run.

    Returns
    -------
    EnvironmentsResult
        The generator's return value, as :func:`classify_environments` returns it.
    """
    from threadpoolctl import threadpool_limits

    stack, is_stack = _scaled(image)
    pos, frames = check_positions(positions, stack.shape, n_frames=len(stack), is_stack=is_stack)
    max_classes = check_number(max_classes, "max_classes", low=1, integer=True)
    n_init = check_number(n_init, "n_init (mixture restarts)", low=1, integer=True)
    seed = check_number(seed, "seed", low=0, integer=True)
    unusual_k = check_number(unusual_k, "unusual_k", low=0, low_open=True)
    if n_classes is not None:
        n_classes = check_number(n_classes, "n_classes", low=1, integer=True)
    if n_pca is not None:
        n_pca = check_number(n_pca, "n_pca", low=1, integer=True)
    if patch_size is not None:
        patch_size = check_number(patch_size, "patch_size", low=3, integer=True, unit="pixels")
    if min_class_size is not None:
        min_class_size = check_number(
            min_class_size, "min_class_size", low=1, integer=True, unit="atoms"
        )
    n = len(pos)
    if n < 10:
        raise ValueError(f"Only {n} atoms were given; classifying environments needs at least 10.")
    if n_classes is not None and not (1 <= int(n_classes) <= n // 5):
        raise ValueError(
            f"{n_classes} classes cannot be fitted to {n} atoms; use 1 … {max(1, n // 5)} "
            "(at least five atoms per class)."
        )
    if covariance not in ("auto", "full", "diag"):
        raise ValueError(f"covariance must be 'auto', 'full' or 'diag', not {covariance!r}.")
    if patch_size is None:
        patch_size = auto_patch_size(pos, frames)
    patch_size = int(patch_size) | 1
    if patch_size < 3 or patch_size > min(stack.shape[1:]):
        raise ValueError(
            f"patch_size {patch_size} px must be between 3 and the image size "
            f"{min(stack.shape[1:])} px."
        )
    all_feats = yield from _describe_iter(stack, pos, frames, patch_size, descriptor)
    edge = near_edge(pos, stack.shape[1:], patch_size)
    fit_on = ~edge if (~edge).sum() >= max(10, n // 2) else np.ones(n, bool)
    n_fit = int(fit_on.sum())
    n_pca = int(min(4 if n_pca is None else n_pca, max(1, min(all_feats.shape[1], n_fit - 1))))
    if n_pca < 1:
        raise ValueError(f"n_pca must be at least 1, not {n_pca}.")
    if covariance == "auto":
        covariance = "full" if n_fit >= 10 * (n_pca * (n_pca + 3) // 2 + 1) else "diag"
    if min_class_size is None:
        min_class_size = max(8, int(np.ceil(0.02 * n_fit)))
    settings = dict(
        descriptor=descriptor,
        patch_size=patch_size,
        n_pca=n_pca,
        n_classes=n_classes,
        max_classes=max_classes,
        covariance=covariance,
        n_init=n_init,
        seed=seed,
        min_class_size=min_class_size,
        unusual_k=unusual_k,
    )
    # pass 1 on every interior atom; pass 2 without the atoms pass 1 found unusual, so that a
    # few outliers cannot claim PCA directions of their own and hide in them
    model, bic = yield from _fit_pass(all_feats[fit_on], 1, settings)
    with threadpool_limits(1):
        nll = model.score(all_feats)[2]
    used = fit_on & (nll <= _robust_cut(nll[fit_on], unusual_k))
    if used.sum() >= max(10, n_fit // 2) and used.sum() < n_fit:
        model, bic = yield from _fit_pass(all_feats[used], 2, settings)
    else:
        used = fit_on
    with threadpool_limits(1):
        cls = model.score(all_feats)[0]
        model.order = model.order[
            np.argsort(-np.bincount(cls, minlength=len(model.order)), kind="stable")
        ]
        cls, prob, nll = model.score(all_feats)  # class 0 = the most common class
    model.threshold = _robust_cut(nll[fit_on], unusual_k)
    best = int(model.gmm.n_components)
    params = dict(
        {k: v for k, v in settings.items() if k != "seed"},  # the seed has its own field
        n_atoms=n,
        n_fitted=int(used.sum()),
        chosen_classes=best,
    )
    return EnvironmentsResult(
        classes=cls,
        probability=prob,
        unusualness=nll,
        unusual=(nll > model.threshold) & ~edge,
        n_classes=best,
        bic=bic,
        patch_size=patch_size,
        explained_variance=model.pca.explained_variance_ratio_.copy(),
        edge=edge,
        provenance=make_provenance("defect_environments", parameters=params, seed=seed),
        model=model,
    )
