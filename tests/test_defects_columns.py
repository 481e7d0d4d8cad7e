"""Column-intensity check of the defect segmenter (defects/columns.py) on exact synthetic truth."""

import numpy as np
import pytest

from napari_microml.defects import columns as C
from napari_microml.defects.classes import CLASS_NAMES, class_id
from napari_microml.runtime.validate import robust_normalize
from napari_microml.synth.defects import column_contrast, simulate_defects
from napari_microml.synth.lattice import DOPANT_BRIGHT, DOPANT_DIM, HOST, INTERSTITIAL

HELD_OUT = 5_600_000  # training uses 1,000,000+, validation 9,000,000+


def _perovskite(seed=HELD_OUT, dose=np.inf, shape=(160, 160)):
    """A perovskite crystal whose B sublattice is clearly dimmer than A (relative height < 0.6)."""
    for k in range(50):
        s = simulate_defects(
            shape,
            seed=seed + k,
            dose=dose,
            scene="crystal",
            lattice="perovskite",
            spacing=11,
            contrast="bright",
        )
        inner = (s.positions.min(1) > 11) & (s.positions.max(1) < shape[0] - 12) & (s.kinds == HOST)
        if (
            (s.kinds == DOPANT_BRIGHT).sum() >= 3
            and s.amplitude[inner].min() < 0.6 * s.amplitude[inner].max()
            and not s.extended.any()
        ):
            return s
    raise AssertionError("no suitable perovskite sample")


@pytest.fixture(scope="module")
def pv():
    return _perovskite()


def _lattice_columns(s):
    """Truth columns of the crystal lattice (interstitials excluded) and their kinds."""
    keep = s.kinds != INTERSTITIAL
    return s.positions[keep], s.kinds[keep], s.amplitude[keep]


def test_heights_follow_the_planted_column_amplitudes(pv):
    cols, kinds, amp = _lattice_columns(pv)
    h = C.column_heights(robust_normalize(pv.image), cols, 11.0)
    inner = (cols.min(1) > 15) & (cols.max(1) < 145)
    assert h.shape == (len(cols),)
    assert np.corrcoef(h[inner], amp[inner])[0, 1] > 0.95


def test_contrast_is_taken_within_the_columns_own_sublattice(pv):
    cols, kinds, amp = _lattice_columns(pv)
    contrast, z = C.sublattice_contrast(
        cols, C.column_heights(robust_normalize(pv.image), cols, 11.0)
    )
    truth, _ = column_contrast(cols, kinds, amp)
    ok = np.isfinite(contrast) & np.isfinite(truth)
    assert ok.sum() > 100
    # measured and exact contrast agree (no noise), so a B-site dopant dimmer than the A columns
    # around it still stands out against the B columns
    assert np.corrcoef(contrast[ok], truth[ok])[0, 1] > 0.9
    _, sigma = column_contrast(cols, kinds, amp)
    clear = ok & (kinds == DOPANT_BRIGHT) & ((truth - 1) / sigma >= 8)  # 8 spreads above, exactly
    host = ok & (kinds == HOST)
    assert clear.sum() >= 2 and (z[clear] > C.Z_RESCUE).all()
    assert (z[ok & (kinds == DOPANT_BRIGHT)] > C.Z_WEAK - 1).all()
    assert (z[host] < C.Z_WEAK).mean() > 0.99
    assert (z[ok & (kinds == DOPANT_DIM)] < 0).all()


def test_skipped_columns_are_not_judged_nor_used(pv):
    cols, _, _ = _lattice_columns(pv)
    h = C.column_heights(robust_normalize(pv.image), cols, 11.0)
    skip = np.zeros(len(cols), bool)
    skip[:20] = True
    contrast, z = C.sublattice_contrast(cols, h, skip=skip)
    assert np.isnan(contrast[:20]).all() and np.isnan(z[:20]).all()
    h2 = h.copy()
    h2[:20] = 100.0  # a skipped column never serves as a reference
    np.testing.assert_array_equal(C.sublattice_contrast(cols, h2, skip=skip)[0], contrast)


def _silent(shape):
    """Class probabilities of a network that sees no defect at all, and empty instances."""
    probs = np.zeros((len(CLASS_NAMES) + 1, *shape), np.float32)
    probs[0] = 1.0
    stats = {
        "class_id": np.zeros(0, int),
        "row": np.zeros(0),
        "col": np.zeros(0),
        "area_px": np.zeros(0, int),
        "confidence": np.zeros(0, np.float32),
    }
    return probs, np.zeros(shape, np.int32), stats


def test_rescue_finds_the_bright_dopants_a_silent_network_missed_and_nothing_else():
    s = _perovskite(dose=2000)
    cols, kinds, amp = _lattice_columns(s)
    truth_c, sigma = column_contrast(cols, kinds, amp)
    probs, labels, stats = _silent(s.image.shape)
    out, st, z = C.column_check(robust_normalize(s.image), probs, labels, stats, cols, 11.0)
    assert z.shape == (len(cols),)
    assert set(st["class_id"]) <= {class_id("dopant_bright")}
    found = np.column_stack([st["row"], st["col"]])
    truth = cols[kinds == DOPANT_BRIGHT]
    d_true = np.hypot(*(found[:, None] - truth[None]).transpose(2, 0, 1)).min(1)
    assert (
        len(found) >= 2 and (d_true < 1e-6).all()
    )  # every rescue sits on a true bright dopant's column
    # and every bright dopant 8 host spreads above its own sublattice (exact truth) is found
    clear = (kinds == DOPANT_BRIGHT) & ((truth_c - 1) / sigma >= 8)
    assert clear.sum() >= 2
    d_found = np.hypot(*(cols[clear][:, None] - found[None]).transpose(2, 0, 1)).min(1)
    assert (d_found < 1e-6).all()
    # labels and stats agree: consecutive labels, areas, discs around the columns
    assert set(np.unique(out)) - {0} == set(range(1, len(st["row"]) + 1))
    np.testing.assert_array_equal(
        np.bincount(out.ravel(), minlength=len(st["row"]) + 1)[1:], st["area_px"]
    )


def test_veto_drops_a_bright_call_on_an_ordinary_column_and_keeps_a_true_one():
    s = _perovskite(dose=2000)
    cols, kinds, _ = _lattice_columns(s)
    probs, labels, stats = _silent(s.image.shape)
    inner = (cols.min(1) > 20) & (cols.max(1) < 140)
    host = cols[inner & (kinds == HOST)][0]
    dopant = cols[inner & (kinds == DOPANT_BRIGHT)][0]
    for lab, p in enumerate((host, dopant), start=1):
        r, c = np.rint(p).astype(int)
        labels[r - 2 : r + 3, c - 2 : c + 3] = lab
    stats = {
        "class_id": np.array([class_id("dopant_bright")] * 2),
        "row": np.array([host[0], dopant[0]]),
        "col": np.array([host[1], dopant[1]]),
        "area_px": np.array([25, 25]),
        "confidence": np.array([0.9, 0.9], np.float32),
    }
    out, st, _ = C.column_check(robust_normalize(s.image), probs, labels, stats, cols, 11.0)
    kept = np.column_stack([st["row"], st["col"]])
    assert not (np.hypot(*(kept - host).T) < 1).any()
    assert (np.hypot(*(kept - dopant).T) < 1e-9).sum() == 1  # kept once, not rescued again
    assert out[tuple(np.rint(host).astype(int))] == 0


def test_columns_beside_a_predicted_extended_region_are_left_alone():
    s = _perovskite(dose=2000)
    cols, kinds, _ = _lattice_columns(s)
    probs, labels, stats = _silent(s.image.shape)
    labels[:, :] = 1  # the whole image is one predicted extended region
    stats = {
        "class_id": np.array([class_id("extended")]),
        "row": np.array([80.0]),
        "col": np.array([80.0]),
        "area_px": np.array([labels.size]),
        "confidence": np.array([0.9], np.float32),
    }
    out, st, z = C.column_check(robust_normalize(s.image), probs, labels, stats, cols, 11.0)
    assert np.isnan(z).all() and len(st["row"]) == 1 and (out == labels).all()


def test_nothing_changes_without_a_spacing_or_enough_columns(pv):
    probs, labels, stats = _silent(pv.image.shape)
    for cols, spacing in ((pv.positions, None), (pv.positions[:5], 11.0), (np.zeros((0, 2)), 11.0)):
        out, st, z = C.column_check(pv.image, probs, labels, stats, cols, spacing)
        assert out is labels and st is stats and np.isnan(z).all() and len(z) == len(cols)


def _square_with_empty_ring(dose: float, a: float = 10.0, n: int = 13, seed: int = 0):
    """A square lattice (spacing ``a`` px) at ``dose`` counts per column peak (Poisson), with one
    bright dopant (1.8×) far from a host column five of whose eight same-sublattice neighbours
    are empty sites that are still listed as columns, as the atom finder lists noise peaks at low
    dose. Returns the image, the columns, the host column's index and the dopant's index."""
    rng = np.random.default_rng(seed)
    size = int(a * (n + 1))
    grid = (np.arange(n) + 1) * a
    cols = np.array([(r, c) for r in grid for c in grid], float)
    amp = np.ones(len(cols))
    host = int(np.hypot(*(cols - 3 * a).T).argmin())
    dopant = int(np.hypot(*(cols - 10 * a).T).argmin())
    amp[dopant] = 1.8
    dist = np.hypot(*(cols - cols[host]).T)
    amp[np.nonzero((dist > 1.2 * a) & (dist <= 2.1 * a))[0][:5]] = 0.0
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 0.1)
    for (r, c), height in zip(cols, amp, strict=True):
        img += height * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.3**2))
    return (rng.poisson(img * dose) / dose).astype(np.float32), cols, host, dopant


def test_height_noise_is_the_noise_of_the_smoothed_image():
    from scipy import ndimage as ndi

    img = np.random.default_rng(1).normal(0.0, 0.3, (256, 256)).astype(np.float32)
    for spacing in (8.0, 15.0):
        measured = float(np.std(ndi.gaussian_filter(img, C.SMOOTH * spacing)))
        assert C.height_noise(img, spacing) == pytest.approx(measured, rel=0.08)


def test_low_dose_rescue_needs_a_ring_of_measured_columns():
    img, cols, host, dopant = _square_with_empty_ring(dose=20.0)
    net_in = robust_normalize(img)
    heights, noise = C.column_heights(net_in, cols, 10.0), C.height_noise(net_in, 10.0)
    _, z = C.sublattice_contrast(cols, heights)
    assert z[host] > C.Z_RESCUE and z[dopant] > C.Z_RESCUE  # both look like outliers by z alone
    measured = C.ring_above_noise(cols, heights, noise)
    assert not measured[host] and measured[dopant]
    probs, labels, stats = _silent(img.shape)
    _, st, _ = C.column_check(net_in, probs, labels, stats, cols, 10.0)
    found = np.column_stack([st["row"], st["col"]])
    assert len(found) == 1 and np.hypot(*(found[0] - cols[dopant])) < 1e-6
    assert st["confidence"][0] >= 0.5
