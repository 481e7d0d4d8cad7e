import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_microml.defects.classes import CLASS_NAMES, class_id
from napari_microml.synth.defects import _boundary_band, simulate_defects
from napari_microml.synth.lattice import DOPANT_BRIGHT, simulate_lattice


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_classmap_and_objects_agree(seed):
    s = simulate_defects((128, 128), seed=seed, dose=300)
    assert s.image.shape == s.clean.shape == s.classmap.shape == (128, 128)
    assert s.classmap.dtype == np.uint8 and s.classmap.max() <= len(CLASS_NAMES)
    assert set(s.objects["class"]) <= set(CLASS_NAMES)
    points = s.objects[s.objects["class"] != "extended"]
    for _, o in points.iterrows():  # every point defect's site carries its class in the map
        r, c = int(round(o["row"])), int(round(o["col"]))
        if 0 <= r < 128 and 0 <= c < 128:
            assert s.classmap[r, c] == class_id(o["class"]) == o["class_id"]
    for name in CLASS_NAMES[:4]:  # and every labelled pixel belongs to a planted object
        mask = s.classmap == class_id(name)
        assert mask.sum() == points.loc[points["class"] == name, "area_px"].sum()
    ext = s.objects[s.objects["class"] == "extended"]
    assert ext["area_px"].sum() == (s.classmap == class_id("extended")).sum()


def test_truth_matches_the_planted_lattice():
    s = simulate_defects(
        (160, 160),
        seed=11,
        dose=np.inf,
        scene="crystal",
        lattice="square",
        spacing=10,
        contrast="bright",
    )
    lat = simulate_lattice(
        (160, 160),
        scene="crystal",
        lattice="square",
        spacing=10,
        rotation=s.params["rotation"],
        dose=np.inf,
        seed=11,
    )
    np.testing.assert_allclose(s.positions, lat.positions)
    vac = s.objects[s.objects["class"] == "vacancy"][["row", "col"]].to_numpy()
    inside = ~s.extended[
        np.rint(lat.vacancies[:, 0]).astype(int), np.rint(lat.vacancies[:, 1]).astype(int)
    ]
    np.testing.assert_allclose(np.sort(vac, 0), np.sort(lat.vacancies[inside], 0))
    bright = s.objects[s.objects["class"] == "dopant_bright"][["row", "col"]].to_numpy()
    planted = lat.positions[lat.kinds == DOPANT_BRIGHT]
    ip = np.rint(planted).astype(int)
    assert len(bright) == (~s.extended[ip[:, 0], ip[:, 1]]).sum()
    # vacancies are empty sites: no column within 0.3 spacing
    if len(vac):
        assert cKDTree(s.positions).query(vac)[0].min() > 3


def test_grain_boundary_band_sits_between_the_two_grains():
    spacing = 9.0
    s = simulate_defects(
        (192, 192),
        seed=4,
        dose=np.inf,
        scene="interface",
        lattice="square",
        spacing=spacing,
        distort=False,
        contrast="bright",
    )
    band = _boundary_band((192, 192), 4, 0.75 * spacing)
    assert (s.classmap == class_id("extended"))[band].all()
    # columns far from the band on one side form the first crystal: nearest-neighbour
    # distance = spacing
    wide = _boundary_band((192, 192), 4, 2.5 * spacing)
    ip = np.rint(s.positions).astype(int).clip(0, 191)
    away = s.positions[~wide[ip[:, 0], ip[:, 1]]]
    from scipy import ndimage as ndi

    sides, _ = ndi.label(~wide)
    side = sides[
        np.rint(away[:, 0]).astype(int).clip(0, 191), np.rint(away[:, 1]).astype(int).clip(0, 191)
    ]
    good = []
    for k in np.unique(side[side > 0]):
        pts = away[side == k]
        nn = cKDTree(s.positions).query(pts, k=2)[0][:, 1]
        good.append(np.mean(np.abs(nn - spacing) < 0.03 * spacing))
    # one side is purely the first crystal, the other purely the second (another spacing here):
    # the line is where simulate_lattice drew it (a wrong line mixes the two)
    assert len(good) == 2 and max(good) > 0.95 and min(good) < 0.05


def test_dark_contrast_and_determinism():
    a = simulate_defects((96, 96), seed=5, dose=200, contrast="dark", lattice="square", spacing=10)
    b = simulate_defects((96, 96), seed=5, dose=200, contrast="dark", lattice="square", spacing=10)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.params["contrast"] == "dark"
    ip = np.rint(a.positions).astype(int)
    assert np.median(a.clean[ip[:, 0], ip[:, 1]]) < np.median(a.clean)  # columns are dark dips
    c = simulate_defects(
        (96, 96), seed=5, dose=200, contrast="bright", lattice="square", spacing=10
    )
    ip = np.rint(c.positions).astype(int)
    assert np.median(c.clean[ip[:, 0], ip[:, 1]]) > np.median(c.clean)
    np.testing.assert_array_equal(a.classmap, c.classmap)  # same truth in either contrast


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="16"):
        simulate_defects((8, 8), seed=0)
    with pytest.raises(ValueError, match="scene"):
        simulate_defects((64, 64), seed=0, scene="particle")
    with pytest.raises(ValueError, match="contrast"):
        simulate_defects((64, 64), seed=0, contrast="purple")


@pytest.mark.parametrize("lattice", ["square", "perovskite"])
def test_column_contrast_separates_dopants_from_their_own_sublattice(lattice):
    from napari_microml.synth.defects import column_contrast
    from napari_microml.synth.lattice import DOPANT_DIM, HOST

    got = {HOST: [], DOPANT_BRIGHT: [], DOPANT_DIM: []}
    for seed in range(21, 25):
        s = simulate_defects(
            (160, 160),
            seed=seed,
            dose=np.inf,
            scene="crystal",
            lattice=lattice,
            spacing=10,
            contrast="bright",
        )
        assert s.amplitude.shape == (len(s.positions),)
        c, sigma = column_contrast(s.positions, s.kinds, s.amplitude)
        assert 0 < sigma < 0.2
        for kind in got:
            got[kind].extend(c[(s.kinds == kind) & np.isfinite(c)])
    host, bright, dim = (np.array(got[k]) for k in (HOST, DOPANT_BRIGHT, DOPANT_DIM))
    assert abs(np.median(host) - 1) < 0.03  # hosts sit at their own sublattice's level
    assert len(bright) >= 3 and len(dim) >= 3
    # planted ×1.4–2.2 and ×0.3–0.6 of their own site (host spread up to ±12 %), also on the dim
    # perovskite B sublattice, whose hosts are 0.3–0.75 of the A columns
    assert bright.min() > 1.15 and dim.max() < 0.8
