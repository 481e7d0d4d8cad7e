import numpy as np
import pytest

from napari_microml.synth.lattice import HOST, LATTICES, SCENES, simulate_lattice


@pytest.mark.parametrize("lattice", LATTICES)
def test_every_lattice_puts_intensity_at_the_truth(lattice):
    s = simulate_lattice((128, 128), scene="crystal", lattice=lattice, spacing=12, dose=np.inf,
                         defects=False, distort=False, seed=1)
    assert len(s.positions) > 20 and (s.kinds == HOST).all()
    ip = np.rint(s.positions).astype(int)
    on = s.clean[ip[:, 0], ip[:, 1]]
    assert np.median(on) > np.median(s.clean) + 0.3


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
