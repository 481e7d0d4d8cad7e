"""count_atoms on simulated columns of 1–8 atoms (intensity ∝ count) at three doses."""

import numpy as np
import pytest

import napari_microml as mm
from napari_microml.lattice.counting import fit_mixture, voronoi_cells
from napari_microml.synth.strained import strained_lattice


@pytest.mark.parametrize("dose, at_least", [(100, 0.90), (300, 0.95), (3000, 0.99)])
def test_counts_at_three_doses(dose, at_least):
    s = strained_lattice("counts", dose=dose, seed=3)
    c = mm.count_atoms(s.image, s.positions)
    assert c.n_components == 8  # ICL finds the 8 levels
    assert c.edge.mean() < 0.02 and (c.counts[c.edge] == 0).all()  # cells cut by the image
    assert (c.counts == s.counts)[~c.edge].mean() >= at_least
    # background removed: the k-atom level sits at k × the single-atom cross-section
    np.testing.assert_allclose(c.mixture.means / dose, np.arange(1, 9), atol=0.1)
    assert c.provenance["tool"] == "atom_counting"


def test_counts_per_sublattice_of_a_perovskite():
    # A columns scatter 1.0 per atom, B columns 0.45: one mixture for both would mix the combs
    s = strained_lattice("counts", structure="perovskite", dose=1000, seed=4)
    c = mm.count_atoms(s.image, s.positions, sublattice=s.sublattice)
    assert set(c.groups) == {0, 1} and c.parameters["per_sublattice"]
    # the outer columns' cells are not closed by neighbours (larger, more background): not counted
    assert 0 < c.edge.mean() < 0.2
    assert (c.counts == s.counts)[~c.edge].mean() >= 0.98
    step = [np.diff(c.groups[k].means).mean() / 1000 for k in (0, 1)]
    np.testing.assert_allclose(step, [1.0, 0.45], rtol=0.1)
    pooled = mm.count_atoms(s.image, s.positions)
    assert (pooled.counts == s.counts)[~pooled.edge].mean() < 0.8


def test_one_level_is_one_component():
    x = np.random.default_rng(0).normal(100, 5, 400)
    mixture, resp = fit_mixture(x, 10)
    assert len(mixture.means) == 1 and resp.shape == (400, 1)


def test_icl_picks_levels_present_and_leaves_gaps_empty():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(k * 50.0, 4, 150) for k in (2, 3, 5)])
    mixture, _ = fit_mixture(x, 12)
    big = mixture.means[mixture.weights > 0.05]
    np.testing.assert_allclose(big, [100, 150, 250], atol=3)


def test_voronoi_cells_split_pixels_by_nearest_column():
    labels, dist = voronoi_cells((20, 40), np.array([[10.0, 10.0], [10.0, 29.0]]), max_radius=100)
    assert (labels[:, :20] == 1).all() and (labels[:, 20:] == 2).all()
    assert dist[10, 10] == 0


def test_bad_input():
    with pytest.raises(ValueError, match="at least 10"):
        mm.count_atoms(np.ones((64, 64)), np.array([[5.0, 5.0]]))
    with pytest.raises(ValueError, match="outside"):
        mm.count_atoms(np.ones((64, 64)), np.full((12, 2), 100.0))
    with pytest.raises((ValueError, TypeError), match="max_count"):
        mm.count_atoms(
            np.ones((64, 64)), np.random.default_rng(0).random((12, 2)) * 60, max_count=0
        )
