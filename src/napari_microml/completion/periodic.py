"""A crystal-lattice mean for kriging: a Fourier series on the lattice's reciprocal vectors.

A local GP only sees the measured pixels around each gap, so it cannot use the fact that a
crystal repeats: every unit cell is a fresh, independent sample of the same motif. Here the
reciprocal-lattice vectors are read from the spectrum of a cheap fill of the scan, refined by
least squares on the measured pixels only, and a few harmonics of them are fitted (linear least
squares, measured pixels only) as the image's mean; the local GP then krigs what the lattice
does not explain. Whether the lattice mean is used is decided per scan by a held-out check on
the measured pixels (:func:`napari_microml.completion.kriging.lattice_kriging_iter`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize

MIN_PERIOD = 3.0  # px: finer "lattices" are pixel noise
MIN_CELLS = 4  # the lattice must repeat at least this often across the frame
MAX_SPECTRUM = 1024  # px: larger frames are searched for reflections in a central crop
MIN_RELATIVE_POWER = 0.01  # a reflection holds at least this share of the strongest one's power
FALSE_PEAK = 0.05  # chance that pure noise puts one bin over the peak threshold, per frame
ORDER = 3  # harmonics h·g1 + k·g2 with |h|, |k| ≤ ORDER
REFINE_POINTS = 2000  # measured pixels used to refine the reciprocal vectors
SAMPLES_PER_PARAMETER = 10  # fewer measured pixels per coefficient: drop the highest harmonics


@dataclass
class LatticeMean:
    """A Fourier-series mean: ``const + Σ_f a_f cos 2π f·x + b_f sin 2π f·x``.

    basis : (1 or 2, 2) reciprocal vectors (cycles/px, (row, col)).
    freqs : (M, 2) harmonic frequencies (cycles/px).
    coef : (1 + 2M,) constant, then the cos and the sin coefficients.
    origin : (2,) pixel the phases are measured from (the frame centre, for conditioning).
    normal : ``(AᵀA, Aᵀy)`` of the fit (:func:`normal_equations`), for refits without some
        pixels; None when not kept.
    """

    basis: np.ndarray
    freqs: np.ndarray
    coef: np.ndarray
    origin: np.ndarray
    normal: tuple[np.ndarray, np.ndarray] | None = None

    def at(self, pts: np.ndarray) -> np.ndarray:
        """The mean at pixel coordinates ``pts`` (N, 2)."""
        return design(pts - self.origin, self.freqs) @ self.coef

    def image(self, shape: tuple[int, int]) -> np.ndarray:
        """The mean on the whole ``shape`` pixel grid (float64), by separable phase factors."""
        y = np.arange(shape[0]) - self.origin[0]
        x = np.arange(shape[1]) - self.origin[1]
        m = len(self.freqs)
        c = (
            self.coef[1 : 1 + m] - 1j * self.coef[1 + m :]
        )  # a cos θ + b sin θ = Re((a − ib) e^{iθ})
        ey = np.exp(2j * np.pi * np.outer(y, self.freqs[:, 0]))
        ex = np.exp(2j * np.pi * np.outer(self.freqs[:, 1], x))
        return self.coef[0] + ((ey * c) @ ex).real


def design(pts: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Design matrix (N, 1 + 2M): a constant, cos and sin of 2π f·x for each frequency."""
    phase = 2 * np.pi * (pts @ freqs.T)
    return np.concatenate([np.ones((len(pts), 1)), np.cos(phase), np.sin(phase)], 1)


def harmonics(basis: np.ndarray, order: int = ORDER, f_max: float = 1 / MIN_PERIOD) -> np.ndarray:
    """Frequencies h·g1 + k·g2 (half plane, no zero) with |h|, |k| ≤ order and |f| ≤ f_max,
    lowest first."""
    return _harmonic_indices(basis, order, f_max) @ _padded(basis)


def _padded(basis: np.ndarray) -> np.ndarray:
    """(2, 2) basis: one vector (fringes) gets a zero second vector."""
    return np.vstack([basis, [0.0, 0.0]]) if len(basis) == 1 else np.asarray(basis)


def _harmonic_indices(basis: np.ndarray, order: int, f_max: float) -> np.ndarray:
    """Integer (h, k) of :func:`harmonics`' frequencies, in its order (M, 2)."""
    hs = np.arange(-order, order + 1)
    if len(basis) == 1:
        combos = np.array([[h, 0] for h in hs if h > 0])
    else:
        combos = np.array([[h, k] for h in hs for k in hs if h > 0 or (h == 0 and k > 0)])
    n = np.linalg.norm(combos @ _padded(basis), axis=1)
    keep = n <= f_max
    return combos[keep][np.argsort(n[keep], kind="stable")]


def alias_vectors(mask: np.ndarray, *, strength: float = 0.5) -> np.ndarray:
    """Frequency shifts q (cycles/px) under which the scan cannot tell f from f + q.

    A regular pattern (a grid, evenly spaced lines) has spectral peaks |M(q)| as strong as its
    DC term: on its pixels, cos 2π f·x and cos 2π (f + q)·x read the same. Returns the q ≠ 0
    with |M(q)| ≥ ``strength``·M(0), (n, 2); none for an irregular pattern.
    """
    h, w = mask.shape
    mm = np.abs(np.fft.fft2(mask.astype(np.float64)))
    fy = np.fft.fftfreq(h)[:, None] * np.ones((1, w))
    fx = np.fft.fftfreq(w)[None, :] * np.ones((h, 1))
    far = (np.abs(fy) * h > 2) | (np.abs(fx) * w > 2)  # beyond the finite frame's DC lobe
    strong = far & (mm >= strength * mm[0, 0])
    q = np.stack([fy[strong], fx[strong]], 1)
    if len(q) == 0:
        return q
    n = np.linalg.norm(q, axis=1)
    return q[n <= 2 * n.min()]  # the nearest shifts bound the resolvable zone


ALIAS_MARGIN = 0.8  # a frequency must be this much closer to 0 than to any alias shift


def resolvable(freqs: np.ndarray, aliases: np.ndarray) -> np.ndarray:
    """Which ``freqs`` (M, 2) are clearly the lowest of their alias class (nearer 0 than any
    alias shift q by ``ALIAS_MARGIN``): only those are told apart from a lower frequency by the
    scan (a held-out check on the scan's own pixels cannot tell: they alias alike)."""
    f = np.asarray(freqs, np.float64).reshape(-1, 2)
    d0 = (f * f).sum(1)
    ok = np.ones(len(f), bool)
    for q in aliases:  # one shift at a time: bounded memory on a whole spectrum
        ok &= d0 < ALIAS_MARGIN**2 * ((f - q) ** 2).sum(1)
    return ok


def _ring_medians(ring: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """Median of ``p`` in each ring label 0..n-1 (0 where a ring is empty), by one sort."""
    o = np.lexsort((p, ring))
    rs, ps = ring[o], p[o]
    labels = np.unique(rs)
    start = np.searchsorted(rs, labels, "left")
    count = np.searchsorted(rs, labels, "right") - start
    lo = ps[start + (count - 1) // 2]
    hi = ps[start + count // 2]
    med = np.zeros(n)
    med[labels] = 0.5 * (lo + hi)
    return med


def _peak_subbin(logp: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Parabolic sub-bin offset of a spectral peak along each axis (bins)."""
    out = []
    for a, b in (
        (((i - 1) % logp.shape[0], j), ((i + 1) % logp.shape[0], j)),
        (
            (i, (j - 1) % logp.shape[1]),
            (i, (j + 1) % logp.shape[1]),
        ),
    ):
        lo, c, hi = logp[a], logp[i, j], logp[b]
        den = lo - 2 * c + hi
        out.append(float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5)) if den < 0 else 0.0)
    return out[0], out[1]


def lattice_basis(image: np.ndarray, *, aliases: np.ndarray | None = None) -> np.ndarray | None:
    """Reciprocal-lattice vectors (cycles/px) of the strongest periodicity in ``image``.

    Parameters
    ----------
    image : (H, W) the scan's measured values less their mean, 0 where unmeasured (its
        spectrum is the image's blurred by the scan pattern's, whose energy an irregular
        pattern spreads thinly).
    aliases : the scan's alias shifts (:func:`alias_vectors`): reflections are looked for only
        among the frequencies the scan resolves.

    Returns
    -------
    (2, 2) two non-collinear vectors, (1, 2) one (fringes), or None when no peak stands out.
    """
    from scipy.signal.windows import tukey

    h, w = image.shape
    if max(h, w) > MAX_SPECTRUM:  # a central crop holds enough cells; memory stays bounded
        y0, x0 = max(0, (h - MAX_SPECTRUM) // 2), max(0, (w - MAX_SPECTRUM) // 2)
        image = image[y0 : y0 + MAX_SPECTRUM, x0 : x0 + MAX_SPECTRUM]
        h, w = image.shape

    # edges tapered (their jump would leak along the axes), the middle kept: a Hann window
    # would discard most of a sparse scan's samples
    win = np.outer(tukey(h, 0.25), tukey(w, 0.25))
    p = np.abs(np.fft.fft2((image - image.mean()) * win)) ** 2
    fy = np.fft.fftfreq(h)[:, None] * np.ones((1, w))
    fx = np.fft.fftfreq(w)[None, :] * np.ones((h, 1))
    fr = np.hypot(fy, fx)
    band = (fr <= 1 / MIN_PERIOD) & (fr >= MIN_CELLS / min(h, w))
    if aliases is not None and len(aliases):
        band &= resolvable(np.stack([fy.ravel(), fx.ravel()], 1), aliases).reshape(h, w)
    ring = np.minimum((fr * min(h, w)).astype(int), min(h, w))  # rings one bin wide
    med = _ring_medians(ring[band], p[band], int(ring.max()) + 1)
    # divided in the band only: outside it the rings are empty and p / 1e-300 overflows
    ratio = np.divide(p, np.maximum(med[ring], 1e-300), out=np.zeros_like(p), where=band)
    # noise power is exponential (median ln 2): the ratio pure noise exceeds in one of the
    # band's bins with probability FALSE_PEAK
    peak_ratio = np.log(max(int(band.sum()), 1) / FALSE_PEAK) / np.log(2)
    # a reflection: a local maximum standing out of its ring; the strongest such wins (a faint
    # high-frequency ripple on a smooth image stands out of its near-empty ring, too)
    peak = (ratio >= peak_ratio) & (p >= ndi.maximum_filter(p, size=3, mode="wrap"))
    # and not a ripple beside the strongest reflection (on a clean image every ring is empty)
    peak &= p >= MIN_RELATIVE_POWER * np.max(np.where(peak, p, 0.0))
    power = np.where(peak & ((fy > 0) | ((fy == 0) & (fx > 0))), p, 0.0)
    logp = np.log(np.maximum(p, 1e-300))
    picked: list[np.ndarray] = []
    for _ in range(2):
        cand = power.copy()
        for g in picked:  # the second vector: not along the first (≥ 30° apart)
            cosang = np.abs(fy * g[0] + fx * g[1]) / np.maximum(fr * np.hypot(*g), 1e-300)
            cand[cosang > np.cos(np.radians(30))] = 0
        i, j = (int(x) for x in np.unravel_index(int(np.argmax(cand)), cand.shape))
        if cand[i, j] <= 0:
            break
        di, dj = _peak_subbin(logp, i, j)
        picked.append(np.array([fy[i, j] + di / h, fx[i, j] + dj / w]))
    if not picked:
        return None

    def is_peak(f):
        i, j = int(round(f[0] * h)), int(round(f[1] * w))
        return (
            bool(peak[(i - 1) % h : (i + 1) % h + 1, (j - 1) % w : (j + 1) % w + 1].any())
            if (abs(i) < h // 2 - 1 and abs(j) < w // 2 - 1)
            else False
        )

    return _primitive(np.array(picked), is_peak)


def _primitive(basis: np.ndarray, is_peak) -> np.ndarray:
    """The coarsest lattice holding ``basis`` and the reflections at its 1/2 and 1/3 fractions
    that ``is_peak`` finds (the two strongest reflections may span a sublattice, e.g. a
    superstructure's or one of every third reflection of a hexagonal motif)."""
    for _ in range(4):
        found = None
        for n in (2, 3):
            fracs = [(i, j) for i in range(n) for j in range(n if len(basis) == 2 else 1)]
            for i, j in fracs[1:]:
                c = (i * basis[0] + (j * basis[1] if len(basis) == 2 else 0)) / n
                if is_peak(c):
                    found = (c, n)
                    break
            if found:
                break
        if found is None:
            return basis
        c, n = found
        if len(basis) == 1:
            basis = c[None]
            continue
        rng = range(-3, 4)
        vs = np.array(
            [a * basis[0] + b * basis[1] + e * c for a in rng for b in rng for e in range(n)]
        )
        vs = vs[np.linalg.norm(vs, axis=1) > 1e-9]
        vs = vs[np.argsort(np.linalg.norm(vs, axis=1), kind="stable")]
        covol = abs(np.linalg.det(basis)) / n
        v1 = vs[0]
        dets = np.abs(vs[:, 0] * v1[1] - vs[:, 1] * v1[0])
        basis = np.array([v1, vs[int(np.argmax(np.abs(dets - covol) < 0.01 * covol))]])
    return basis


def solve_normal(gram: np.ndarray, rhs: np.ndarray, n: int) -> np.ndarray:
    """Coefficients from the normal equations ``gram c = rhs`` of ``n`` samples, columns
    scaled to unit RMS, with a tiny ridge (aliased harmonics stay finite)."""
    scale = np.sqrt(np.maximum(np.diag(gram), 0) / max(n, 1)) + 1e-12
    gn = gram / np.outer(scale, scale)
    s = scale.reshape(-1, *([1] * (np.ndim(rhs) - 1)))  # ``rhs`` may hold several columns
    c = np.linalg.solve(gn + 1e-6 * n * np.eye(len(gn)), rhs / s)
    return c / s


def normal_equations(
    rel: np.ndarray, y: np.ndarray, freqs: np.ndarray, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """``AᵀA`` and ``Aᵀy`` of the design at ``rel`` (N, 2), summed in chunks (bounded memory)."""
    m = 1 + 2 * len(freqs)
    gram, rhs = np.zeros((m, m)), np.zeros(m)
    for i in range(0, len(y), chunk):
        a = design(rel[i : i + chunk], freqs)
        gram += a.T @ a
        rhs += a.T @ y[i : i + chunk]
    return gram, rhs


def projected_residual(rel: np.ndarray, y: np.ndarray, *, shape: tuple[int, ...], order: int):
    """Residual of the best Fourier-series fit as a function of the reciprocal vectors alone
    (variable projection), and its exact Jacobian (Golub & Pereyra).

    Parameters
    ----------
    rel : (N, 2) pixel coordinates relative to the phase origin.
    y : (N,) values.
    shape : shape of the basis, (1, 2) or (2, 2); the functions take it flattened.
    order : highest harmonic index (:func:`harmonics`).

    Returns
    -------
    resid, jac : functions of the flattened basis: ``A c(b) − y`` (N,) and its derivative
        (N, b.size), with ``c(b)`` the least-squares coefficients (:func:`solve_normal`).
    """
    cache: dict = {}

    def setup(b):
        key = b.tobytes()
        if cache.get("key") != key:
            basis = b.reshape(shape)
            idx = _harmonic_indices(basis, order, 1 / MIN_PERIOD)
            a = design(rel, idx @ _padded(basis))
            gram = a.T @ a
            c = solve_normal(gram, a.T @ y, len(y))
            cache.update(key=key, idx=idx, a=a, gram=gram, c=c, r=a @ c - y)
        return cache

    def resid(b):
        return setup(b)["r"].copy()

    def jac(b):
        s = setup(b)
        a, idx, c, r = s["a"], s["idx"], s["c"], s["r"]
        m = len(idx)
        cos, sin = a[:, 1 : 1 + m], a[:, 1 + m :]
        # ∂A/∂b_p c and (∂A/∂b_p)ᵀ r; the phase of harmonic j moves by 2π (h_j, k_j)[v]·x[axis]
        # when component ``axis`` of vector v moves
        slope = sin * -c[1 : 1 + m] + cos * c[1 + m :]  # (N, M): ∂(A c)/∂phase_j
        da_c, dat_r = [], []
        for v in range(shape[0]):
            for axis in range(2):
                x = 2 * np.pi * rel[:, axis]
                da_c.append(x * (slope @ idx[:, v]))
                xr = x * r
                dat_r.append(
                    np.concatenate([[0.0], -(xr @ sin) * idx[:, v], (xr @ cos) * idx[:, v]])
                )
        da_c_, dat_r_ = np.stack(da_c, 1), np.stack(dat_r, 1)
        n = len(y)
        # dr/db = (I − P) ∂A c − A⁺ᵀ ∂Aᵀ r, P = A A⁺ the projection on the design's columns
        proj = da_c_ - a @ solve_normal(s["gram"], a.T @ da_c_, n)
        return proj - a @ solve_normal(s["gram"], dat_r_, n)

    return resid, jac


def fit_lattice_mean(
    pts: np.ndarray,
    y: np.ndarray,
    basis: np.ndarray,
    shape: tuple[int, int],
    *,
    order: int = ORDER,
    seed: int = 0,
    aliases: np.ndarray | None = None,
) -> LatticeMean | None:
    """Refine ``basis`` and fit the Fourier-series mean by least squares on measured pixels.

    Parameters
    ----------
    pts : (N, 2) measured pixel coordinates (row, col).
    y : (N,) their values.
    basis : initial reciprocal vectors from :func:`lattice_basis` (cycles/px).
    shape : the frame's (H, W); phases are measured from its centre.
    order : highest harmonic index; harmonics are dropped (highest first) while fewer than
        ``SAMPLES_PER_PARAMETER`` measured pixels remain per coefficient.
    aliases : the scan's alias shifts (:func:`alias_vectors`); harmonics the scan cannot tell
        from a lower frequency are left out.

    Returns
    -------
    LatticeMean, or None when a regular scan does not resolve the lattice's second harmonics
    (fewer than ~4 samples per period along a lattice vector).
    """
    aliases = np.zeros((0, 2)) if aliases is None else aliases
    # a regular scan must resolve the second harmonics too: coarser, it reads a moiré that
    # a held-out check on its own (equally aliased) pixels cannot tell from a lattice
    if not resolvable(2 * basis, aliases).all():
        return None
    origin = (np.asarray(shape, np.float64) - 1) / 2
    rel = pts - origin
    rng = np.random.default_rng(seed)
    sub = rng.choice(len(y), min(len(y), REFINE_POINTS), replace=False)
    # variable projection: the coefficients are solved inside, only the vectors are searched
    resid, jac = projected_residual(rel[sub], y[sub], shape=basis.shape, order=min(order, 2))
    step = 1.0 / max(shape)  # a vector's change that moves the phase ~2π across the frame
    norm = 1.0 / max(float(((y[sub] - y[sub].mean()) ** 2).sum()), 1e-300)  # unit-free cost

    def cost(z):
        b = basis.ravel() + step * z
        r = resid(b)
        return 0.5 * norm * float(r @ r), norm * step * (jac(b).T @ r)

    # quasi-Newton, not Gauss-Newton: on noisy data the residual is large and Gauss-Newton's
    # Hessian, which leaves out its term, creeps (~60 steps instead of ~15)
    res = minimize(cost, np.zeros(basis.size), jac=True, method="L-BFGS-B", options={"gtol": 0})
    refined = (
        (basis.ravel() + step * res.x).reshape(basis.shape)
        if res.fun <= cost(0 * res.x)[0]
        else basis
    )
    if not resolvable(2 * refined, aliases).all():
        return None
    freqs = harmonics(refined, order)
    freqs = freqs[resolvable(freqs, aliases)]
    freqs = freqs[: max(1, (len(y) // SAMPLES_PER_PARAMETER - 1) // 2)]
    gram, rhs = normal_equations(rel, y, freqs)
    return LatticeMean(refined, freqs, solve_normal(gram, rhs, len(y)), origin, (gram, rhs))
