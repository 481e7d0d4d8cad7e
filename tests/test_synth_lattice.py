import numpy as np
import pytest

from napari_microml.synth.lattice import EXTRA_LATTICES, HOST, LATTICES, SCENES, simulate_lattice


@pytest.mark.parametrize("lattice", LATTICES)
def test_every_lattice_puts_intensity_at_the_truth(lattice):
    s = simulate_lattice(
        (128, 128),
        scene="crystal",
        lattice=lattice,
        spacing=12,
        dose=np.inf,
        defects=False,
        distort=False,
        seed=1,
    )
    assert len(s.positions) > 20 and (s.kinds == HOST).all()
    ip = np.rint(s.positions).astype(int)
    on = s.clean[ip[:, 0], ip[:, 1]]
    assert np.median(on) > np.median(s.clean) + 0.3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dichalcogenide_is_a_honeycomb_of_two_unequal_sublattices(seed):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order
    from scipy.spatial import cKDTree

    s = simulate_lattice(
        (160, 160),
        scene="crystal",
        lattice="dichalcogenide",
        spacing=12,
        dose=np.inf,
        defects=False,
        distort=False,
        rotation=0.3,
        seed=seed,
    )
    pairs = cKDTree(s.positions).query_pairs(12 * 1.2, output_type="ndarray")
    d = np.linalg.norm(s.positions[pairs[:, 0]] - s.positions[pairs[:, 1]], axis=1)
    np.testing.assert_allclose(
        d, 12, atol=0.05
    )  # nearest neighbours only: a honeycomb, not a triangle
    n = len(s.positions)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    order, pred = breadth_first_order(graph, 0, directed=False)
    side = np.zeros(n, int)
    for i in order[1:]:  # two-colour the neighbour graph: the two sublattices
        side[i] = 1 - side[pred[i]]
    assert (side[pairs[:, 0]] != side[pairs[:, 1]]).all()
    level = [np.median(s.amplitude[order][side[order] == k]) for k in (0, 1)]
    ratio = min(level) / max(level)
    assert 0.12 < ratio < 0.95  # the chalcogen pair (or N) column at 0.15-0.9 of the metal (or B)


def test_dichalcogenide_contrast_spans_light_to_heavy_chalcogens():
    from napari_microml.synth.lattice import _cell

    rel = np.array([_cell("dichalcogenide", np.random.default_rng(k))[2] for k in range(200)])
    assert (rel[:, 0] == 1).all() and rel[:, 1].min() >= 0.15 and rel[:, 1].max() <= 0.9
    assert rel[:, 1].min() < 0.2 and rel[:, 1].max() > 0.8
    np.testing.assert_array_equal(_cell("honeycomb", np.random.default_rng(0))[2], [1, 1])


def test_extra_lattices_are_never_drawn_at_random():
    assert "dichalcogenide" in EXTRA_LATTICES and not set(EXTRA_LATTICES) & set(LATTICES)
    drawn = {
        simulate_lattice((32, 32), scene="crystal", seed=k).params["lattice"] for k in range(60)
    }
    assert drawn <= set(LATTICES) and len(drawn) == len(LATTICES)
    with pytest.raises(ValueError, match="dichalcogenide"):
        simulate_lattice((32, 32), scene="crystal", lattice="hexagonal", seed=0)


@pytest.mark.parametrize("scene", SCENES)
def test_scenes_are_reproducible_and_noisy(scene):
    a = simulate_lattice((96, 96), scene=scene, dose=50, seed=5)
    b = simulate_lattice((96, 96), scene=scene, dose=50, seed=5)
    np.testing.assert_array_equal(a.image, b.image)
    assert np.abs(a.image - a.clean).mean() > 0.01
    assert a.image.dtype == np.float32 and a.positions.shape[1] == 2


def test_defects_are_planted():
    s = simulate_lattice((256, 256), scene="crystal", lattice="square", spacing=8, seed=2)
    kinds = set(s.kinds.tolist())
    assert len(s.vacancies) + len(kinds - {HOST}) > 0


def test_training_lattice_weights_keep_old_recipes_and_name_extra_lattices():
    """training.common.lattice_for: without weights the simulator chooses; old recipes draw only
    LATTICES; an EXTRA_LATTICES entry appears only when named, at about its weight."""
    from napari_microml.training.common import lattice_for

    assert lattice_for(5, None) is None
    old = {lattice_for(k, {"perovskite": 3}) for k in range(300)}
    assert old == set(LATTICES)
    drawn = [lattice_for(k, {"dichalcogenide": 1.5}) for k in range(2000)]
    assert 0.18 < drawn.count("dichalcogenide") / len(drawn) < 0.28  # 1.5 / 6.5 = 0.23
    assert set(drawn) == set(LATTICES) | {"dichalcogenide"}


def test_training_option_weights_parse():
    from napari_microml.training.common import parse_weights

    assert parse_weights("") is None
    assert parse_weights("dichalcogenide=1.5, perovskite=3") == {
        "dichalcogenide": 1.5,
        "perovskite": 3.0,
    }
