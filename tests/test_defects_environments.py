"""Local-environment clustering on synthetic lattices with exact truth."""

import numpy as np
import pytest
from scipy.spatial import cKDTree
from sklearn.metrics import adjusted_rand_score

from napari_microml.defects.environments import classify_environments
from napari_microml.synth.lattice import lattice_sites
from napari_microml.synth.render import add_noise, render_gaussians


def _scene(
    seed,
    *,
    lattice="perovskite",
    size=192,
    spacing=11.0,
    dose=500.0,
    dim_frac=0.0,
    odd=0,
    jitter=0.2,
    rotation=0.3,
):
    """Image, observed positions and true class: 0 A host, 1 B host, 2 dim dopant (A site),
    3 B host next to a dim dopant, 4 odd atom (interstitial at a cell centre)."""
    rng = np.random.default_rng(seed)
    pts, rel, mids = lattice_sites((size, size), lattice, spacing, rotation, rng)
    a_site = rel > 0.99
    rel = np.where(a_site, 1.0, 0.5)
    truth = np.where(a_site, 0, 1)
    dim = a_site & (rng.uniform(size=len(pts)) < dim_frac)
    rel[dim] *= 0.4
    truth[dim] = 2
    if dim.any():
        near = (cKDTree(pts[dim]).query(pts)[0] < 1.05 * spacing) & (truth == 1)
        truth[near] = 3
    if odd:
        inner = mids[((mids > 30) & (mids < size - 30)).all(1)]
        pick = inner[rng.choice(len(inner), odd, replace=False)]
        pts, rel = np.vstack([pts, pick]), np.concatenate([rel, np.full(odd, 0.6)])
        truth = np.concatenate([truth, np.full(odd, 4)])
    clean = render_gaussians((size, size), pts, np.full(len(pts), 0.2 * spacing), rel) + 0.1
    image = (add_noise(clean, dose, rng) / dose).astype(np.float32)
    inside = ((pts > 2) & (pts < size - 3)).all(1)
    return image, pts[inside] + rng.normal(0, jitter, (inside.sum(), 2)), truth[inside]


def test_recovers_planted_classes():
    image, pos, truth = _scene(1, dim_frac=0.15)
    r = classify_environments(image, pos)
    assert (
        r.classes.shape
        == r.probability.shape
        == r.unusualness.shape
        == r.unusual.shape
        == (len(pos),)
    )
    ari = adjusted_rand_score(truth, r.classes)
    assert ari > 0.8, ari
    assert r.classes.min() == 0 and r.classes.max() == r.n_classes - 1
    assert np.all((r.probability > 0) & (r.probability <= 1 + 1e-9))
    counts = np.bincount(r.classes)
    assert np.all(np.diff(counts) <= 0)  # class 0 is the most common
    assert r.patch_size % 2 == 1 and 15 <= r.patch_size <= 35  # ≈ 2.4 × 11 px spacing


def test_bic_finds_two_sublattices_but_one_for_a_plain_lattice():
    image, pos, truth = _scene(2, dose=1000)
    r = classify_environments(image, pos)
    assert r.n_classes >= 2 and set(r.bic) == set(range(1, 9))
    assert adjusted_rand_score(truth, r.classes) > 0.9
    image, pos, _ = _scene(3, lattice="square", dose=1000)
    assert classify_environments(image, pos).n_classes == 1


def test_planted_odd_atom_is_most_unusual():
    image, pos, truth = _scene(4, lattice="square", odd=1)
    r = classify_environments(image, pos)
    odd = np.flatnonzero(truth == 4)[0]
    assert r.unusual[odd]
    assert np.argmax(r.unusualness) == odd
    assert r.unusual[truth != 4].mean() < 0.05


def test_model_fitted_on_clean_image_flags_unseen_type():
    image, pos, _ = _scene(5, lattice="square")
    ref = classify_environments(image, pos)
    image2, pos2, truth2 = _scene(6, lattice="square", odd=4)
    out = ref.apply(image2, pos2)
    assert out.n_classes == ref.n_classes
    odd = truth2 == 4
    assert out.unusual[odd].all()
    far = cKDTree(pos2[odd]).query(pos2)[0] > 11  # an extra atom makes its neighbours odd too
    assert out.unusual[far].mean() < 0.05
    assert out.unusualness[odd].min() > out.unusualness[far].max()


def test_stack_uses_each_frames_image_and_is_reproducible():
    image, pos, truth = _scene(7, dim_frac=0.15)
    stack = np.stack([image, image[::-1]])
    pos2 = pos.copy()
    pos2[:, 0] = image.shape[0] - 1 - pos2[:, 0]
    both = np.vstack(
        [np.column_stack([np.zeros(len(pos)), pos]), np.column_stack([np.ones(len(pos)), pos2])]
    )
    r = classify_environments(stack, both)
    n = len(pos)
    assert adjusted_rand_score(r.classes[:n], r.classes[n:]) > 0.95  # same atoms, flipped frame
    again = classify_environments(stack, both)
    np.testing.assert_array_equal(r.classes, again.classes)
    np.testing.assert_allclose(r.unusualness, again.unusualness)
    assert r.provenance["tool"] == "defect_environments" and r.provenance["seed"] == 0


def test_user_choices_are_honoured():
    image, pos, _ = _scene(8, dim_frac=0.15)
    r = classify_environments(image, pos, n_classes=3, patch_size=20, descriptor="patch", n_pca=3)
    assert r.n_classes == 3 and set(r.bic) == {3} and r.patch_size == 21
    assert len(r.explained_variance) == 3 and set(np.unique(r.classes)) <= {0, 1, 2}


def test_border_atoms_are_classified_but_not_flagged():
    image, pos, _ = _scene(9)
    r = classify_environments(image, pos)
    assert r.edge.any() and (~r.edge).any()
    assert not r.unusual[r.edge].any()


@pytest.mark.parametrize(
    "positions, image, match",
    [
        (np.zeros((5, 2)) + 50, np.zeros((64, 64)), "at least 10"),
        (np.zeros((20, 4)), np.zeros((64, 64)), r"\(N, 2\)"),
        (np.zeros((20, 2)), np.zeros((2, 64, 64)), "frame column"),
        (np.column_stack([np.full(20, 5), np.zeros((20, 2))]), np.zeros((2, 64, 64)), "frame"),
        (np.full((20, 2), np.nan), np.zeros((64, 64)), "NaN"),
        (
            np.zeros((20, 2)),
            np.zeros((64, 64, 3), np.uint8) + np.arange(3, dtype=np.uint8),
            "RGB|colour",
        ),
    ],
)
def test_bad_input_raises_clear_errors(positions, image, match):
    with pytest.raises(ValueError, match=match):
        classify_environments(image, positions)


def test_impossible_settings_raise():
    image, pos, _ = _scene(10)
    with pytest.raises(ValueError, match="classes cannot be fitted"):
        classify_environments(image, pos, n_classes=len(pos))
    with pytest.raises(ValueError, match="descriptor"):
        classify_environments(image, pos, descriptor="zernike")
    with pytest.raises(ValueError, match="patch_size"):
        classify_environments(image, pos, patch_size=1001)


def test_real_srtio3_abf_sublattices(shared_data):
    """SrTiO3 [001] ABF (hyperspy demo): the classes are sublattices, so a column's nearest
    neighbour almost never shares its class (random labels would share it about a third of
    the time)."""
    path = shared_data / "formats" / "stem_abf_data.hspy"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    import napari_microml as mm
    from napari_microml.io.reader import read_file

    image = np.asarray(read_file(path)[0][0], np.float32)[:256, :256]
    atoms = mm.find_atoms(image, contrast="dark", device="cpu").positions
    r = classify_environments(-image, atoms)  # dark columns: invert, as the widget does
    assert r.n_classes >= 2
    nearest = cKDTree(atoms).query(atoms, k=2)[1][:, 1]
    assert (r.classes[nearest] == r.classes).mean() < 0.1
