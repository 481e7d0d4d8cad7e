"""Choosing the defect model from the lattice (defects/material.py), on simulated truth."""

import numpy as np
import pytest

from napari_microml.defects.material import RATIO_MAX, choose_model, sublattice_ratio
from napari_microml.synth.lattice import simulate_lattice


def _sample(lattice, seed=0, **kw):
    kw = {"scene": "crystal", "spacing": 11, "dose": 500, "defects": True, **kw}
    return simulate_lattice((192, 192), lattice=lattice, seed=seed, **kw)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_unequal_honeycomb_gets_the_dichalcogenide_model(seed):
    s = _sample("dichalcogenide", seed)
    chosen, ratio = choose_model(s.image, s.positions)
    assert chosen == "dichalcogenide" and 0.1 < ratio < RATIO_MAX
    # the ratio read from the image matches the planted one (host columns: dim half / bright half)
    amp = np.sort(s.amplitude[s.kinds == 0])
    truth = np.median(amp[: len(amp) // 2]) / np.median(amp[len(amp) // 2 :])
    assert ratio == pytest.approx(truth, abs=0.12), (ratio, truth)


@pytest.mark.parametrize(
    "lattice", ["honeycomb", "square", "triangular", "perovskite", "rectangular"]
)
def test_other_lattices_keep_the_default_model(lattice):
    s = _sample(lattice, 4)
    chosen, ratio = choose_model(s.image, s.positions)
    assert chosen == "default"
    if lattice == "honeycomb":  # graphene: two equal sublattices
        assert ratio > 0.9
    elif lattice in ("triangular", "perovskite"):  # 6 / 4 neighbours: not a honeycomb at all
        assert ratio is None


def test_no_verdict_on_too_few_columns_or_random_points():
    s = _sample("dichalcogenide", 1)
    assert sublattice_ratio(s.image, s.positions[:20]) is None
    rng = np.random.default_rng(0)
    assert choose_model(s.image, rng.uniform(0, 191, (300, 2)))[0] == "default"
