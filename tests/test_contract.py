"""The input contract of the public API (issue #27).

Property-based (hypothesis): random shapes, dtypes, scales, offsets, NaN/inf patterns and
parameters go into every public function; each call either returns a finite result or raises
ValueError/TypeError with a sentence, never another exception and never a hang. Plain
parametrized tests below check that results do not depend on the data's units (× 1e-12,
× 1e12, an offset) and pin each bad input the issue reported to its clear error.

Small images, tiny networks and few examples keep the file fast (``CONTRACT`` settings).
"""

from __future__ import annotations

import math
import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_microml as mm

CONTRACT = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SCALES = [1e-16, 1e12, "offset"]  # 1e-16: below every former 1e-12 floor
HANG_S = 120  # far above any call here; turns a hang into a failure


# --- helpers --------------------------------------------------------------------------------------
@contextmanager
def _no_hang(seconds=HANG_S):
    def fail(*_):
        raise AssertionError(f"the call ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


REFUSED = []  # the last refusal's message, for assertion messages


class Refused:
    """What :func:`contract` returns when a call refused its input (a result may be None)."""


def refused(result) -> bool:
    return result is Refused


def contract(fn, *args, **kwargs):
    """``fn(...)``'s result, or :class:`Refused` when it refused the input with a
    ValueError/TypeError that says why in a sentence. Any other exception fails the test."""
    with _no_hang():
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as err:
            msg = str(err)
            REFUSED[:] = [msg]
            assert len(msg) > 15 and " " in msg, f"unclear message: {msg!r}"
            assert "Traceback" not in msg
            return Refused


def _blobs(shape, rng, spacing=6.0):
    """Bright Gaussian columns on a square grid with noise: something for every tool to find."""
    h, w = shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w))
    off = rng.uniform(0, spacing, 2)
    for r in np.arange(off[0], h, spacing):
        for c in np.arange(off[1], w, spacing):
            img += np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.2**2))
    img += 0.05 * rng.standard_normal((h, w))
    return img


@st.composite
def images(draw, min_side=8, max_side=40, stack=True, bad_dtypes=True):
    """An image or small stack: any dtype, scale, offset and NaN/inf pattern."""
    ndim = draw(st.sampled_from([2, 2, 3] if stack else [2]))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    frames = draw(st.integers(1, 2)) if ndim == 3 else 1
    img = np.stack([_blobs((h, w), rng) for _ in range(frames)])
    dtypes = ["float64", "float32", "uint16", "uint8", "int16"] + (["bool"] if bad_dtypes else [])
    dtype = draw(st.sampled_from(dtypes))
    if dtype in ("uint16", "uint8", "int16"):
        img = np.clip(img * 100 + 20, 0, np.iinfo(dtype).max).astype(dtype)
    elif dtype == "bool":
        img = img > 0.5
    else:
        scale = draw(
            st.sampled_from([1e-30, 1e-12, 1.0, 1e12] + ([1e300] if dtype == "float64" else []))
        )
        offset = draw(st.sampled_from([0.0, 0.0, 1.0, -7.0, 1e3]))
        img = ((img + offset) * scale).astype(dtype)
        nan = draw(st.sampled_from(["none", "none", "some", "inf", "frame"]))
        if nan == "some":
            img[..., rng.random(img.shape[-2:]) < 0.05] = np.nan
        elif nan == "inf":
            img[..., 0, 0] = np.inf
        elif nan == "frame":
            img[0] = np.nan
    return img if ndim == 3 else img[0]


def _finite(*arrays):
    for a in arrays:
        a = np.asarray(a, float)
        assert np.isfinite(a).all(), "a result holds NaN or inf"


def _on_image(pos, shape):
    pos = np.asarray(pos, float).reshape(-1, 2)
    h, w = shape[-2:]
    assert ((pos >= -0.5) & (pos <= np.array([h, w]) - 0.5)).all(), "a position lies off the image"


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.just(float("nan")),
    st.just(float("inf")),
    st.integers(-3, 3),
    st.floats(-2, 2),
)


def _maybe(default, strategy):
    """Mostly the default (so the other inputs are exercised too), sometimes anything."""
    return st.one_of(st.just(default), st.just(default), strategy)


# --- properties -----------------------------------------------------------------------------------
@CONTRACT
@given(
    image=images(),
    threshold=_maybe(0.5, anything),
    min_distance=_maybe(2, anything),
    tile=_maybe(1024, st.sampled_from([-1, 0, 7, 16, 48, "64"])),
    pixel_size=_maybe(None, anything),
)
def test_find_atoms_contract(image, threshold, min_distance, tile, pixel_size):
    r = contract(
        mm.find_atoms,
        image,
        threshold=threshold,
        min_distance=min_distance,
        tile=tile,
        pixel_size=pixel_size,
        device="cpu",
    )
    if refused(r):
        return
    _finite(r.positions, r.probability, r.features["intensity"])
    _on_image(r.positions, np.shape(image))
    if r.pixel_size is not None:
        assert r.pixel_size > 0


@pytest.mark.parametrize("atoms", ["none", "grid", "outside", "nan", "wrong"])
@settings(CONTRACT, max_examples=3)
@given(
    image=images(min_side=16, max_side=40),
    threshold=_maybe(0.5, anything),
    pixel_size=_maybe(None, anything),
    min_area=_maybe(3, anything),
)
def test_segment_defects_contract(image, threshold, pixel_size, min_area, atoms):
    shape = np.shape(image)
    grid = np.mgrid[2 : shape[-2] - 2 : 6, 2 : shape[-1] - 2 : 6].reshape(2, -1).T.astype(float)
    if len(shape) == 3:
        grid = np.column_stack([np.zeros(len(grid)), grid])
    given_atoms = {
        "none": None,
        "grid": grid,
        "outside": grid + 1000,
        "nan": np.where(np.arange(grid.size).reshape(grid.shape) == 1, np.nan, grid),
        "wrong": np.zeros((4, 5)),
    }[atoms]
    r = contract(
        mm.segment_defects,
        image,
        threshold=threshold,
        pixel_size=pixel_size,
        min_area=min_area,
        atoms=given_atoms,
        device="cpu",
    )
    if refused(r):
        return
    assert atoms not in ("outside", "nan", "wrong"), "bad atoms must be refused"
    assert r.labels.shape == shape and r.labels.dtype == np.int32
    _finite(r.table[["row", "col", "area_px", "confidence"]].to_numpy())
    _on_image(r.table[["row", "col"]].to_numpy(), shape)


@st.composite
def positions(draw, shape):
    h, w = shape[-2:]
    n = draw(st.integers(0, 12))
    rng = np.random.default_rng(draw(st.integers(0, 999)))
    pos = rng.uniform([0, 0], [h - 1, w - 1], (n, 2))
    kind = draw(st.sampled_from(["good", "good", "outside", "nan", "(4, 3)", "flat", "list"]))
    if kind == "outside" and n:
        pos[0] = [-50, -50]
    elif kind == "nan" and n:
        pos[0, 1] = np.nan
    elif kind == "(4, 3)":
        return rng.uniform(0, min(h, w) - 1, (4, 3))
    elif kind == "flat":
        return pos.ravel()
    elif kind == "list":
        return pos.tolist()
    return pos


@CONTRACT
@given(
    data=st.data(),
    image=images(stack=False, min_side=3),
    method=st.sampled_from(["gaussian", "com", "none", "spline"]),
    radius=_maybe(None, anything),
)
def test_refine_positions_contract(data, image, method, radius):
    pos = data.draw(positions(np.shape(image)))
    r = contract(mm.refine_positions, image, pos, method=method, radius=radius)
    if refused(r):
        return
    out, feats = r
    assert out.shape == (len(np.asarray(pos).reshape(-1, 2)), 2)
    _finite(out)
    assert np.asarray(pos).ndim == 2 and np.asarray(pos).shape[1] == 2, "only (N, 2) is accepted"


@pytest.mark.parametrize("kind", ["good", "outside", "nan", "(4, 3)", "few"])
@settings(CONTRACT, max_examples=3)
@given(
    image=images(min_side=24, max_side=48, bad_dtypes=False),
    max_classes=_maybe(8, anything),
    n_init=_maybe(3, anything),
    n_classes=_maybe(None, anything),
)
def test_classify_environments_contract(image, kind, max_classes, n_init, n_classes):
    shape = np.shape(image)
    grid = (
        np.mgrid[3 : shape[-2] - 3 : 6, 3 : shape[-1] - 3 : 6].reshape(2, -1).T.astype(float) + 0.3
    )
    if len(shape) == 3:
        grid = np.column_stack([np.zeros(len(grid)), grid])
    pos = {
        "good": grid,
        "outside": grid + 1000,
        "few": grid[:3],
        "(4, 3)": grid[:4, :3] if grid.shape[1] == 3 else np.ones((4, 3)),
        "nan": np.where(np.arange(grid.size).reshape(grid.shape) == 1, np.nan, grid),
    }[kind]
    if kind in ("outside", "nan"):  # refused for the positions themselves, on a clean image too
        clean = _blobs(shape, np.random.default_rng(0))
        assert refused(
            contract(mm.classify_environments, clean if len(shape) == 2 else clean[None], pos)
        )
    r = contract(
        mm.classify_environments,
        image,
        pos,
        max_classes=max_classes,
        n_init=n_init,
        n_classes=n_classes,
    )
    if refused(r):
        return
    assert kind in ("good", "(4, 3)"), f"{kind} positions must be refused"
    _finite(r.probability, r.unusualness)
    assert len(r.classes) == len(pos) and r.n_classes >= 1


@CONTRACT
@given(
    values=images(stack=False, min_side=8, max_side=32, bad_dtypes=False),
    coverage=st.sampled_from([0.0, 1 / 1024, 0.1, 0.3, 1.0]),
    seed=st.integers(0, 99),
    nan_unmeasured=st.booleans(),
)
def test_complete_scan_contract(values, coverage, seed, nan_unmeasured):
    rng = np.random.default_rng(seed)
    mask = rng.random(values.shape) < coverage
    if nan_unmeasured and values.dtype.kind == "f":
        values = values.copy()
        values[~mask] = np.nan
    r = contract(mm.complete_scan, values, mask, device="cpu")
    if refused(r):
        return
    _finite(r.image, r.uncertainty)
    assert r.image.shape == values.shape


@CONTRACT
@given(
    structure=images(stack=False, min_side=8, max_side=14, bad_dtypes=False),
    scale=st.sampled_from([1e-15, 1.0, 1e12]),
    n=st.integers(1, 6),
    kind=st.sampled_from(["good", "good", "ties", "constant", "repeat", "nan", "outside"]),
    lr=_maybe(0.02, anything),
)
def test_active_learner_contract(structure, scale, n, kind, lr):
    h, w = structure.shape
    rng = np.random.default_rng(n)
    coords = np.column_stack([rng.integers(0, h, n), rng.integers(0, w, n)])
    values = rng.random(n)
    if kind == "ties":
        values = np.round(values)
    elif kind == "constant":
        values = np.full(n, 0.3)
    elif kind == "repeat":
        coords[:] = coords[0]
    elif kind == "nan":
        values[0] = np.nan
    elif kind == "outside":
        coords[0] = [h + 5, 0]
    learner = contract(
        mm.ActiveLearner,
        structure,
        patch_size=4,
        n_models=1,
        device="cpu",
        init_iters=5,
        warm_iters=2,
        lr=lr,
    )
    if refused(learner):
        return
    if refused(contract(learner.observe, coords, values * scale)):
        assert kind in ("nan", "outside"), f"good measurements were refused: {REFUSED}"
        return
    assert kind not in ("nan", "outside"), f"{kind} measurements must be refused"
    mean, std = contract(learner.predict)
    _finite(mean, std)
    assert mean.shape == (h, w) and (std > 0).all()
    assert np.abs(mean).max() <= 10 * scale * max(1.0, np.abs(values).max())  # in the data's units


@CONTRACT
@given(
    n=st.integers(1, 12),
    L=st.integers(1, 12),
    scale=st.sampled_from([1e-30, 1.0, 1e12, 1e300]),
    normalize=st.sampled_from(["max", "max", "global", "none"]),
    hidden=_maybe(8, anything),
    noise_scale=_maybe(0.05, anything),
    learning_rate=_maybe(2e-3, anything),
    batch_size=_maybe(None, anything),
    nan=st.booleans(),
)
def test_fit_shift_vae_contract(
    n, L, scale, normalize, hidden, noise_scale, learning_rate, batch_size, nan
):
    x = np.linspace(-1, 1, L)
    spectra = np.exp(-((x[None] - np.linspace(-0.3, 0.3, n)[:, None]) ** 2) / 0.1) * scale
    if nan and n > 1:
        spectra[1, 0] = np.nan
    r = contract(
        mm.fit_shift_vae,
        spectra,
        epochs=2,
        hidden=hidden,
        noise_scale=noise_scale,
        learning_rate=learning_rate,
        batch_size=batch_size,
        normalize=normalize,
        device="cpu",
    )
    if refused(r):
        return
    _finite(r.shift, r.latents, r.reconstruction)
    assert r.shift.shape == (n,)


# --- the same result whatever the units -----------------------------------------------------------
def _scaled(x, how):
    x = np.asarray(x, np.float64)
    return x + 1e3 * np.ptp(x) if how == "offset" else x * how


@pytest.fixture(scope="module")
def lattice():
    from napari_microml.synth.lattice import simulate_lattice

    return simulate_lattice(
        (96, 96), scene="crystal", lattice="square", spacing=9.0, dose=500, defects=False, seed=3
    )


@pytest.fixture(scope="module")
def atoms_reference(lattice):
    return mm.find_atoms(lattice.image.astype(np.float64), device="cpu")


@pytest.mark.parametrize("how", SCALES)
def test_find_atoms_ignores_units(lattice, atoms_reference, how):
    ref = atoms_reference
    r = mm.find_atoms(_scaled(lattice.image, how), device="cpu")
    assert len(ref.positions) > 50 and len(r.positions) == len(ref.positions)
    np.testing.assert_allclose(r.positions, ref.positions, atol=1e-3)
    np.testing.assert_allclose(r.probability, ref.probability, atol=1e-4)
    if how != "offset":  # intensities come back in the image's units
        np.testing.assert_allclose(
            r.features["intensity"], ref.features["intensity"] * how, rtol=1e-3
        )


@pytest.mark.parametrize("how", SCALES)
def test_refine_positions_ignores_units(lattice, how):
    start = lattice.positions + 0.3
    ref, f_ref = mm.refine_positions(lattice.image.astype(np.float64), start)
    out, f = mm.refine_positions(_scaled(lattice.image, how), start)
    np.testing.assert_allclose(out, ref, atol=1e-3)
    np.testing.assert_array_equal(f["fit_ok"], f_ref["fit_ok"])


@pytest.fixture(scope="module")
def defects_scene():
    from napari_microml.synth.defects import simulate_defects

    return simulate_defects(
        (96, 96),
        seed=11,
        dose=500,
        scene="crystal",
        lattice="square",
        spacing=10,
        contrast="bright",
    )


@pytest.mark.parametrize("how", SCALES)
def test_segment_defects_ignores_units(defects_scene, how):
    img = defects_scene.image.astype(np.float64)
    ref = mm.segment_defects(img, device="cpu", model="default")
    r = mm.segment_defects(_scaled(img, how), device="cpu", model="default")
    assert len(r.table) == len(ref.table)
    assert list(r.table["class"]) == list(ref.table["class"])
    assert (r.labels != ref.labels).mean() < 1e-3
    np.testing.assert_allclose(r.probabilities, ref.probabilities, atol=1e-4)


@pytest.mark.parametrize("how", SCALES)
def test_classify_environments_ignores_units(lattice, how):
    ref = mm.classify_environments(lattice.image.astype(np.float64), lattice.positions)
    r = mm.classify_environments(_scaled(lattice.image, how), lattice.positions)
    np.testing.assert_array_equal(r.classes, ref.classes)
    np.testing.assert_allclose(r.unusualness, ref.unusualness, rtol=1e-4, atol=1e-4)


def _learner_maps(structure, values, coords):
    L = mm.ActiveLearner(
        structure, patch_size=6, n_models=1, device="cpu", init_iters=20, warm_iters=5, seed=0
    )
    L.observe(coords, values)
    return L.predict()


@pytest.mark.parametrize("how", [1e-15, 1e12, "offset"])
def test_active_learner_ignores_units(how):
    rng = np.random.default_rng(0)
    structure = _blobs((20, 20), rng)
    coords = np.column_stack([rng.integers(0, 20, 12), rng.integers(0, 20, 12)])
    values = structure[coords[:, 0], coords[:, 1]] + 0.1 * rng.random(12)
    mean0, std0 = _learner_maps(structure, values, coords)
    scaled = values + 1e3 * np.ptp(values) if how == "offset" else values * how
    s_structure = _scaled(structure, how)
    mean, std = _learner_maps(s_structure, scaled, coords)
    factor = 1.0 if how == "offset" else how
    shift = 1e3 * np.ptp(values) if how == "offset" else 0.0
    rng_ = np.ptp(mean0)
    np.testing.assert_allclose((mean - shift) / factor, mean0, atol=1e-4 * rng_)
    np.testing.assert_allclose(std / factor, std0, atol=1e-4 * rng_)


@pytest.mark.parametrize("how", [1e-30, 1e12, "offset"])
def test_fit_shift_vae_ignores_units(how):
    from napari_microml.synth.spectra import gaussian_peaks

    spectra = gaussian_peaks(64, 40, seed=1)[0]
    ref = mm.fit_shift_vae(spectra.astype(np.float64), epochs=3, hidden=16, device="cpu")
    r = mm.fit_shift_vae(_scaled(spectra, how), epochs=3, hidden=16, device="cpu")
    span = np.ptp(ref.shift)
    assert span > 0
    np.testing.assert_allclose(r.shift, ref.shift, atol=1e-4 * span)


def test_float64_extremes_keep_their_range():
    from napari_microml.runtime.validate import as_image_stack, as_scaled_stack

    img = np.random.default_rng(0).random((16, 16)) * 1e300
    stack, _ = as_image_stack(img)
    assert stack.dtype == np.float64 and np.isfinite(stack).all()
    scaled = as_scaled_stack(img)
    assert np.isfinite(scaled.stack).all() and math.isclose(scaled.scale, np.ptp(img))


# --- each reported bad input, its clear error -----------------------------------------------------
IMG = np.random.default_rng(0).random((32, 32))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"pixel_size": -0.02}, ValueError, "pixel_size must be a positive"),
        ({"pixel_size": 0}, ValueError, "pixel_size must be a positive"),
        ({"pixel_size": float("nan")}, ValueError, "pixel_size must be a positive"),
        ({"min_distance": 0}, ValueError, "min_distance must be at least 1"),
        ({"min_distance": 1.5}, ValueError, "min_distance must be a whole number"),
        ({"tile": 7}, ValueError, "tile must be at least 16"),
        ({"tile": 0}, ValueError, "tile must be at least 16"),
        ({"tile": -64}, ValueError, "tile must be at least 16"),
        ({"threshold": "0.5"}, TypeError, "threshold must be a number, not the text '0.5'"),
        ({"threshold": float("nan")}, ValueError, "threshold must be a finite number"),
    ],
)
def test_find_atoms_parameters(kwargs, error, words):
    with pytest.raises(error, match=words):
        mm.find_atoms(IMG, device="cpu", **kwargs)


def test_bool_image_is_refused():
    with pytest.raises(ValueError, match="True/False"):
        mm.find_atoms(IMG > 0.5, device="cpu")
    with pytest.raises(ValueError, match="True/False"):
        mm.segment_defects(IMG > 0.5, device="cpu")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"tile": 0}, ValueError, "tile must be at least 16"),
        ({"threshold": "high"}, TypeError, "threshold must be a number"),
        ({"min_area": 0}, ValueError, "min_area must be at least 1"),
        ({"atoms": np.array([[5.0, np.nan], [6, 6]])}, ValueError, "NaN"),
        ({"atoms": np.full((3, 2), 1000.0)}, ValueError, "outside the 32×32 px image"),
    ],
)
def test_segment_defects_parameters(kwargs, error, words):
    with pytest.raises(error, match=words):
        mm.segment_defects(IMG, device="cpu", model="default", **kwargs)


def test_positions_outside_the_image_are_refused(lattice):
    with pytest.raises(ValueError, match="outside the 96×96 px image"):
        mm.refine_positions(lattice.image, [[-50, -50]])
    with pytest.raises(ValueError, match="outside"):
        mm.classify_environments(lattice.image, lattice.positions + 1000)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):  # not reshaped into 6 bogus points
        mm.refine_positions(lattice.image, np.full((4, 3), 5.0))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        mm.refine_positions(lattice.image, np.arange(6.0))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"max_classes": 0}, ValueError, "max_classes must be at least 1"),
        ({"n_init": 0}, ValueError, "n_init .* must be at least 1"),
        ({"unusual_k": -1}, ValueError, "unusual_k must be greater than 0"),
        ({"n_pca": "4"}, TypeError, "n_pca must be a whole number"),
    ],
)
def test_classify_environments_parameters(lattice, kwargs, error, words):
    with pytest.raises(error, match=words):
        mm.classify_environments(lattice.image, lattice.positions, **kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"hidden": 0}, "hidden .* must be at least 1"),
        ({"noise_scale": -1}, "noise_scale must be greater than 0"),
        ({"learning_rate": 1e6}, "learning_rate must be between 0 and 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"warmup": 2}, "warmup .* must be between 0 and 1"),
    ],
)
def test_fit_shift_vae_parameters(kwargs, words):
    spectra = np.random.default_rng(0).random((8, 16))
    with pytest.raises(ValueError, match=words):
        mm.fit_shift_vae(spectra, epochs=1, device="cpu", **kwargs)
