import numpy as np
import pandas as pd
import pytest

from napari_microml.defects.baseline import baseline_defects
from napari_microml.defects.classes import CLASS_NAMES, class_id
from napari_microml.defects.instances import instances
from napari_microml.defects.metrics import classmap_from_labels, score_defects, summarize
from napari_microml.defects.segment import COLUMNS, segment_defects, segment_defects_iter
from napari_microml.runtime.workers import collect
from napari_microml.synth.defects import simulate_defects

HELD_OUT = 5_500_000  # training uses seeds 1,000,000+, validation 9,000,000+


@pytest.fixture(scope="module")
def moderate():
    """Two held-out moderate-dose crystals (square and honeycomb), 160 px."""
    return [
        simulate_defects(
            (160, 160),
            seed=HELD_OUT + i,
            dose=300,
            scene="crystal",
            lattice=lat,
            spacing=11,
            contrast="bright",
        )
        for i, lat in enumerate(("square", "honeycomb"))
    ]


@pytest.fixture(scope="module")
def result(moderate):
    return segment_defects(moderate[0].image, pixel_size=0.02, device="cpu")


def test_finds_planted_vacancies_and_bright_dopants(moderate):
    scores = []
    for s in moderate:
        r = segment_defects(s.image, device="cpu")
        scores.append(
            score_defects(
                r.table,
                classmap_from_labels(r.labels, r.table),
                s.objects,
                s.classmap,
                radius=5.5,
                margin=5.5,
            )
        )
    pooled = summarize(scores)
    assert pooled["vacancy"]["n_true"] >= 5 and pooled["dopant_bright"]["n_true"] >= 3
    assert pooled["vacancy"]["f1"] >= 0.75, pooled["vacancy"]  # a divacancy counts as one instance
    assert pooled["dopant_bright"]["f1"] >= 0.75, pooled["dopant_bright"]


def test_dichalcogenide_model_reads_unequal_sublattices_as_host():
    """2H-TMD-like honeycomb (second sublattice 0.15-0.9 as bright): the opt-in model keeps the
    dim sublattice as host. The default model, trained on equal honeycombs only, makes 24 false
    point-defect calls on these frames (dim dopant F1 0.67, interstitial precision 0.07)."""
    scores = []
    for seed in range(23_000_000, 23_000_004):
        s = simulate_defects(
            (192, 192),
            seed=seed,
            dose=300,
            scene="crystal",
            lattice="dichalcogenide",
            spacing=11,
            contrast="bright",
        )
        r = segment_defects(s.image, model="dichalcogenide", device="cpu")
        scores.append(
            score_defects(
                r.table,
                classmap_from_labels(r.labels, r.table),
                s.objects,
                s.classmap,
                radius=5.5,
                margin=5.5,
            )
        )
    pooled = summarize(scores)
    points = ("vacancy", "dopant_bright", "dopant_dim", "interstitial")
    false_calls = sum(round(pooled[c]["n_pred"] * (1 - pooled[c]["precision"])) for c in points)
    assert false_calls <= 10, pooled
    assert pooled["dopant_dim"]["f1"] >= 0.8 and pooled["vacancy"]["recall"] >= 0.8, pooled


def test_auto_model_is_the_default_model_on_other_lattices_and_reuses_the_finder_pass(moderate):
    """model='auto' (the default) keeps the default network on square / graphene-like lattices,
    with exactly its result (the lattice check reuses the columns auto found), and records why."""
    for s in moderate:
        auto = segment_defects(s.image, device="cpu")
        plain = segment_defects(s.image, model="default", device="cpu")
        choice = auto.provenance["parameters"]["model_choice"]
        assert choice["chosen"] == "default" and auto.model == "defects-default"
        np.testing.assert_array_equal(auto.labels, plain.labels)
        pd.testing.assert_frame_equal(auto.table, plain.table)
        assert plain.provenance["parameters"]["model_choice"] is None
    # user atoms decide the choice when given: the truth columns of a WS2-like frame
    ws2 = simulate_defects(
        (160, 160),
        seed=HELD_OUT + 7,
        dose=500,
        scene="crystal",
        lattice="dichalcogenide",
        spacing=11,
        contrast="bright",
    )
    r = segment_defects(ws2.image, atoms=ws2.positions, device="cpu")
    assert r.model == "defects-dichalcogenide", r.provenance["parameters"]["model_choice"]


def test_auto_reports_progress_while_it_reads_the_lattice(moderate):
    """The atom-finder pass that chooses the model yields progress (so Cancel is honoured there);
    a named model skips it, and the lattice check then makes (and reports) its own pass."""
    gen = segment_defects_iter(moderate[0].image, device="cpu")
    first = [next(gen) for _ in range(3)]  # the set-up's two cancel points, then the choice
    assert first[-1][0] == "progress" and first[-1][3].startswith("choosing the model")
    steps = list(segment_defects_iter(moderate[0].image, model="default", device="cpu"))
    assert not any(m.startswith("choosing the model") for *_, m in steps[:3])
    assert any("atom columns, atom finder" in m for *_, m in steps)  # its own pass, with progress


def test_labels_and_table_agree(result, moderate):
    t = result.table
    assert list(t.columns) == list(COLUMNS)
    assert result.class_names == list(CLASS_NAMES)
    assert result.labels.dtype == np.int32 and result.labels.shape == moderate[0].image.shape
    labels_in_image = set(np.unique(result.labels)) - {0}
    assert labels_in_image == set(t["label"])
    area = np.bincount(result.labels.ravel())
    np.testing.assert_array_equal(area[t["label"]], t["area_px"])
    np.testing.assert_allclose(t["area_nm2"], t["area_px"] * 0.02**2)
    np.testing.assert_allclose(t["nearest_atom_nm"], t["nearest_atom_px"] * 0.02)
    assert ((t["confidence"] > 0) & (t["confidence"] <= 1)).all()
    assert all(t["class_id"] == [class_id(c) for c in t["class"]])
    for _, row in t.iterrows():  # the centroid lies near its own instance
        rr, cc = np.nonzero(result.labels == row["label"])
        assert np.hypot(rr - row["row"], cc - row["col"]).min() < 1.5
    assert result.probabilities.shape == (6, *moderate[0].image.shape)
    np.testing.assert_allclose(result.probabilities.sum(0), 1, atol=1e-4)
    assert result.atoms.shape[1] == 2 and len(result.atoms) > 100  # the network's column plane
    counts = result.counts()
    assert list(counts["class"]) == list(CLASS_NAMES) and counts["count"].sum() == len(t)
    area = 160 * 160 * 0.02**2
    np.testing.assert_allclose(counts["density_per_nm2"], counts["count"] / area)
    assert result.provenance["tool"] == "defect_segmenter" and result.provenance["model"]["sha256"]


def test_without_pixel_size_physical_columns_are_nan(moderate):
    r = segment_defects(moderate[0].image[:96, :96], device="cpu")
    assert r.pixel_size is None and r.image_area_nm2 is None
    assert r.table["area_nm2"].isna().all() and r.table["nearest_atom_nm"].isna().all()
    assert r.counts()["density_per_nm2"].isna().all()


def test_user_atoms_are_used_for_distances(moderate):
    # one atom is no lattice: the lattice check would drop every point defect, so it is off here
    r = segment_defects(
        moderate[0].image, atoms=np.array([[0.0, 0.0]]), device="cpu", lattice_check=False
    )
    assert len(r.table)
    np.testing.assert_allclose(r.table["nearest_atom_px"], np.hypot(r.table["row"], r.table["col"]))


def test_dark_contrast_inverts(moderate):
    img = moderate[0].image[:96, :96]
    a = segment_defects(img, device="cpu", column_check=False)  # off for ABF by default
    b = segment_defects(7.0 - img, contrast="dark", device="cpu")  # an "ABF" copy
    np.testing.assert_array_equal(a.labels, b.labels)


def test_stack_gets_a_frame_column(moderate):
    img = moderate[0].image[:96, :96]
    single = segment_defects(img, device="cpu")
    steps, r = collect(segment_defects_iter(np.stack([img, img]), device="cpu"))
    assert steps and all(s[0] == "progress" for s in steps) and steps[-1][1] == steps[-1][2]
    assert r.labels.shape == (2, 96, 96) and r.probabilities is None
    assert "frame" in r.table.columns and set(r.table["frame"]) <= {0, 1}
    n = len(single.table)
    assert len(r.table) == 2 * n and (r.table["frame"] == 1).sum() == n
    assert r.table["label"].is_unique and set(np.unique(r.labels)) - {0} == set(r.table["label"])
    assert r.atoms.shape[1] == 3 and set(np.unique(r.atoms[:, 0])) == {0.0, 1.0}
    assert r.counts()["count"].sum() == 2 * n


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image": np.zeros((20, 20, 3))}, "RGB|colour"),
        ({"image": np.zeros((4, 4))}, "pixels"),
        ({"image": np.full((32, 32), np.nan)}, "valid"),
        ({"contrast": "inverted"}, "contrast"),
        ({"threshold": 1.5}, "threshold"),
        ({"pixel_size": -1.0}, "pixel_size"),
        ({"atoms": np.zeros((3, 4))}, "atoms"),
        ({"model": "nonexistent"}, "No defects model"),
        ({"tta": 9}, "tta"),
    ],
)
def test_bad_input_raises(kwargs, match):
    kwargs = {"image": np.random.default_rng(0).random((32, 32)), **kwargs}
    with pytest.raises(ValueError, match=match):
        segment_defects(kwargs.pop("image"), device="cpu", **kwargs)


def test_baseline_finds_vacancies_at_high_dose():
    s = simulate_defects(
        (160, 160),
        seed=HELD_OUT + 7,
        dose=3000,
        scene="crystal",
        lattice="square",
        spacing=11,
        contrast="bright",
    )
    b = baseline_defects(s.image, device="cpu")
    assert set(b.objects["class"]) <= set(CLASS_NAMES) and b.classmap.shape == s.image.shape
    assert abs(b.spacing - 11) < 1.0
    sc = score_defects(b.objects, b.classmap, s.objects, s.classmap, radius=5.5, margin=5.5)
    assert sc["vacancy"]["n_true"] > 0 and sc["vacancy"]["f1"] > 0.7


def test_metrics_perfect_and_imperfect():
    s = simulate_defects((128, 128), seed=HELD_OUT + 8, dose=300, scene="interface")
    perfect = score_defects(s.objects, s.classmap, s.objects, s.classmap, radius=3)
    for name in CLASS_NAMES:
        if perfect[name]["n_true"]:
            assert perfect[name]["f1"] == 1.0 and perfect[name]["iou"] == 1.0
    fewer = s.objects.drop(index=s.objects.index[s.objects["class"] == "vacancy"][:1])
    if (s.objects["class"] == "vacancy").sum():
        sc = score_defects(fewer, s.classmap, s.objects, s.classmap, radius=3)
        assert sc["vacancy"]["precision"] == 1.0 and sc["vacancy"]["recall"] < 1.0
    with pytest.raises(ValueError, match="shape"):
        score_defects(s.objects, s.classmap[:10], s.objects, s.classmap, radius=3)


def test_border_is_ignored_after_matching_not_before():
    cm = np.zeros((100, 100), np.uint8)

    def table(pts):
        return pd.DataFrame(
            {"class": "vacancy", "row": [p[0] for p in pts], "col": [p[1] for p in pts]}
        )

    # a true vacancy just inside the 10 px border, found just outside it: a hit, not a miss
    sc = score_defects(table([(50, 9.5)]), cm, table([(50, 10.5)]), cm, radius=4, margin=10)[
        "vacancy"
    ]
    assert (sc["tp"], sc["n_pred"], sc["n_true"]) == (1, 1, 1)
    # a true vacancy just in the border, found just inside: ignored, not a false positive
    sc = score_defects(table([(50, 10.5)]), cm, table([(50, 9.5)]), cm, radius=4, margin=10)[
        "vacancy"
    ]
    assert (sc["tp"], sc["n_pred"], sc["n_true"]) == (0, 0, 0)
    # an unmatched prediction inside is a false positive, one in the border is ignored
    sc = score_defects(table([(50, 50), (50, 3)]), cm, table([(20, 20)]), cm, radius=4, margin=10)[
        "vacancy"
    ]
    assert (sc["tp"], sc["n_pred"], sc["n_true"]) == (0, 1, 1)


def test_real_abf_crop_runs(shared_data):
    path = shared_data / "formats" / "stem_abf_data.hspy"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    from napari_microml.io.reader import read_file

    data, kw, _ = read_file(path)[0]
    crop = np.asarray(data, np.float32)[:192, :192]
    r = segment_defects(crop, contrast="dark", pixel_size=0.00933, device="cpu")
    assert isinstance(r.table, pd.DataFrame) and list(r.table.columns) == list(COLUMNS)
    assert set(r.table["class"]) <= set(CLASS_NAMES)
    assert set(np.unique(r.labels)) - {0} == set(r.table["label"])
    assert len(r.atoms) > 20  # SrTiO3 [001]: ~3 columns per 0.39 nm cell, ~60 in a 1.8 nm crop
    assert r.table["area_nm2"].notna().all()


def test_tiled_run_matches_one_pass(moderate):
    img = moderate[1].image
    one = segment_defects(img, device="cpu")
    tiled = segment_defects(img, tile=96, device="cpu")  # 4 overlapping, blended tiles
    assert np.abs(one.probabilities - tiled.probabilities).mean() < 0.02
    assert abs(len(one.table) - len(tiled.table)) <= max(2, 0.2 * len(one.table))


def _painted(h=96, w=96):
    """Class probabilities of an empty lattice and a brush that paints rectangles of one class."""
    probs = np.zeros((6, h, w), np.float32)
    probs[0] = 1.0

    def paint(rows, cols, cls, p):
        probs[:, rows, cols] = 0.0
        probs[0, rows, cols] = 1 - p
        probs[class_id(cls), rows, cols] = p

    return probs, paint


def _names(st):
    return sorted(CLASS_NAMES[c - 1] for c in st["class_id"])


def test_small_or_unconfident_extended_regions_are_dropped_but_point_defects_kept():
    probs, paint = _painted()
    paint(slice(5, 45), slice(5, 45), "extended", 0.95)  # 1600 px ≥ 4 cells of 10 px: kept
    paint(slice(60, 70), slice(60, 70), "extended", 0.95)  # 100 px = 1 cell: dropped
    paint(slice(60, 90), slice(5, 35), "extended", 0.6)  # large but unconfident: dropped
    paint(slice(80, 84), slice(80, 84), "vacancy", 0.9)  # a small point defect: kept
    labels, st = instances(probs, 0.5, 3, spacing=10.0)
    assert _names(st) == ["extended", "vacancy"]
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    big = st["area_px"][st["class_id"] == class_id("extended")]
    assert big.tolist() == [1600]


def test_point_defect_touching_a_grain_boundary_stays_a_point_defect():
    probs, paint = _painted()
    paint(slice(0, 96), slice(10, 26), "extended", 0.95)  # a boundary band, 1536 px
    paint(slice(40, 47), slice(26, 33), "vacancy", 0.9)  # a vacancy against its edge
    labels, st = instances(probs, 0.5, 3, spacing=10.0)
    assert _names(st) == ["extended", "vacancy"]
    v = st["class_id"] == class_id("vacancy")
    assert st["area_px"][v].tolist() == [49]
    assert abs(st["row"][v][0] - 43) < 0.5 and abs(st["col"][v][0] - 29) < 0.5


def test_touching_defects_of_two_classes_are_two_instances_and_rim_fragments_join():
    probs, paint = _painted()
    paint(slice(40, 47), slice(20, 27), "vacancy", 0.9)
    paint(slice(40, 47), slice(27, 34), "dopant_bright", 0.8)  # its neighbour, touching
    paint(slice(70, 77), slice(60, 67), "dopant_dim", 0.9)
    paint(slice(76, 77), slice(67, 69), "interstitial", 0.6)  # 2 px of another class on its rim
    labels, st = instances(probs, 0.5, 3, spacing=10.0)
    assert _names(st) == ["dopant_bright", "dopant_dim", "vacancy"]
    assert st["area_px"][st["class_id"] == class_id("dopant_dim")].tolist() == [51]
    assert labels.max() == 3


def test_point_pixels_inside_an_extended_region_belong_to_it():
    probs, paint = _painted()
    paint(slice(10, 60), slice(10, 60), "extended", 0.95)
    paint(slice(30, 34), slice(30, 34), "dopant_bright", 0.7)  # speckle inside an amorphous patch
    labels, st = instances(probs, 0.5, 3, spacing=10.0)
    assert _names(st) == ["extended"] and st["area_px"].tolist() == [2500]


def test_test_time_augmentation_averages_flipped_copies(moderate):
    from napari_microml.defects.segment import _dihedral

    img = moderate[1].image[:96, :64]  # not square: transposed copies change the shape
    for k in range(8):
        np.testing.assert_array_equal(_dihedral(_dihedral(img[None], k), k, inverse=True)[0], img)
    one = segment_defects(img, device="cpu")
    avg = segment_defects(img, tta=8, device="cpu")
    assert avg.probabilities.shape == one.probabilities.shape
    np.testing.assert_allclose(avg.probabilities.sum(0), 1, atol=1e-4)
    assert 0 < np.abs(avg.probabilities - one.probabilities).mean() < 0.05
    assert avg.provenance["parameters"]["tta"] == 8


def test_a_whole_vacancy_on_an_extended_rim_stays_a_vacancy_but_a_dopant_speck_joins_it():
    probs, paint = _painted()
    paint(slice(10, 70), slice(10, 70), "extended", 0.95)
    paint(slice(20, 26), slice(20, 26), "vacancy", 0.9)  # 36 px >= 0.2 spacing²: a vacancy
    paint(slice(50, 56), slice(50, 56), "dopant_bright", 0.9)  # same size, another class: extended
    paint(slice(40, 43), slice(30, 33), "vacancy", 0.9)  # 9 px: a speck of the region
    labels, st = instances(probs, 0.5, 3, spacing=10.0)
    assert _names(st) == ["extended", "vacancy"]
    v = st["class_id"] == class_id("vacancy")
    assert st["area_px"][v].tolist() == [36]
    assert st["area_px"][~v].tolist() == [3600 - 36]


def test_a_large_dopant_region_is_split_only_where_it_covers_several_columns():
    probs, paint = _painted()
    paint(slice(40, 48), slice(10, 22), "dopant_bright", 0.9)  # 96 px, one column inside
    paint(slice(40, 48), slice(60, 72), "dopant_bright", 0.9)  # 96 px, two columns inside
    paint(slice(80, 84), slice(10, 14), "vacancy", 0.9)  # typical 16 px regions
    paint(slice(80, 84), slice(30, 34), "vacancy", 0.9)
    paint(slice(80, 84), slice(50, 54), "vacancy", 0.9)
    columns = np.array([[44.0, 16.0], [44.0, 62.5], [44.0, 69.5]])
    _, st = instances(probs, 0.5, 3, spacing=10.0, columns=columns)
    assert sorted(st["area_px"][st["class_id"] == class_id("dopant_bright")].tolist()) == [
        48,
        48,
        96,
    ]
    _, st = instances(probs, 0.5, 3, spacing=6.0)  # without columns: split by area alone
    assert (st["class_id"] == class_id("dopant_bright")).sum() > 3


def test_parts_closer_than_half_a_spacing_are_one_defect():
    probs, paint = _painted()
    for c in (10, 30, 50, 70):
        paint(slice(5, 10), slice(c, c + 5), "vacancy", 0.9)  # typical 25 px regions
    paint(slice(40, 50), slice(40, 50), "vacancy", 0.9)  # 100 px = 4 typical, 10 px across
    _, st = instances(probs, 0.5, 3, spacing=20.0)  # 0.5 spacing = 10 px: one vacancy
    assert sorted(st["area_px"].tolist()) == [25, 25, 25, 25, 100]
    _, st = instances(probs, 0.5, 3, spacing=8.0)  # 0.5 spacing = 4 px: several
    assert len(st["area_px"]) > 5 and sorted(st["area_px"].tolist())[-1] < 100


def test_column_check_is_on_for_haadf_and_off_for_abf(moderate):
    img = moderate[0].image[:96, :96]
    assert segment_defects(img, device="cpu").provenance["parameters"]["column_check"] is True
    dark = segment_defects(img.max() - img, contrast="dark", device="cpu")
    assert dark.provenance["parameters"]["column_check"] is False
    forced = segment_defects(img, column_check=False, device="cpu")
    assert forced.provenance["parameters"]["column_check"] is False


def test_wide_lattice_is_resampled_and_results_come_back_on_the_original_pixels():
    s = simulate_defects(
        (640, 640),
        seed=HELD_OUT + 77,
        dose=300,
        scene="crystal",
        lattice="square",
        spacing=40,
        contrast="bright",
    )
    kw = dict(radius=20, margin=20)
    auto = segment_defects(s.image, pixel_size=0.01, device="cpu")
    off = segment_defects(s.image, rescale="off", device="cpu")
    assert (
        auto.provenance["parameters"]["zoom"] < 0.5 and off.provenance["parameters"]["zoom"] == 1.0
    )
    assert auto.labels.shape == s.image.shape and auto.probabilities.shape[1:] == s.image.shape
    f1 = {
        name: summarize(
            [
                score_defects(
                    r.table, classmap_from_labels(r.labels, r.table), s.objects, s.classmap, **kw
                )
            ]
        )["vacancy"]["f1"]
        for name, r in (("auto", auto), ("off", off))
    }
    assert f1["auto"] > 0.8 and f1["auto"] > f1["off"] + 0.3, f1
    # every instance is in the label image, near its centroid, in original pixels
    assert set(np.unique(auto.labels)) - {0} == set(auto.table["label"])
    assert auto.table["row"].between(0, 639).all() and (auto.table["area_nm2"] > 0).all()
    with pytest.raises(ValueError, match="rescale"):
        segment_defects(s.image[:64, :64], rescale="huge")


def test_point_defects_need_a_lattice_around_them():
    """A vacancy or dopant is a site of a lattice: calls in the vacuum beside a nanoparticle are
    dropped (that crystals lose nothing is the benchmark's job: benchmarks/defects.py)."""
    from scipy.spatial import cKDTree

    from napari_microml.defects.context import near_lattice
    from napari_microml.synth.lattice import simulate_lattice

    grid = np.stack(np.meshgrid(np.arange(10) * 10.0, np.arange(10) * 10.0), -1).reshape(-1, 2)
    assert near_lattice([[45, 45], [0, 0], [200, 200], [95, 105]], grid).tolist() == [
        True,
        True,
        False,
        False,
    ]
    assert not near_lattice([[45, 45]], grid[:2]).any()  # two columns are no lattice

    s = simulate_lattice((192, 192), scene="particle", dose=200, seed=14_300_002)
    spacing = float(np.median(cKDTree(s.positions).query(s.positions, k=2)[0][:, 1]))

    def away_from_atoms(result):
        t = result.table[result.table["class"] != "extended"]
        return int((cKDTree(s.positions).query(t[["row", "col"]].to_numpy())[0] > spacing).sum())

    checked = segment_defects(s.image)
    assert checked.provenance["parameters"]["lattice_check"] is True
    assert away_from_atoms(segment_defects(s.image, lattice_check=False)) >= 5
    assert away_from_atoms(checked) <= 1


class _SilentNet:
    """A 'network' that sees no defect: every defect reported came from the column check."""

    @staticmethod
    def make():
        import torch

        class Silent(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))

            def forward(self, x):
                out = torch.zeros(x.shape[0], len(CLASS_NAMES) + 1, *x.shape[2:]) + 0 * self.w
                out[:, 0] = 20.0  # defect-free everywhere
                return out

        return Silent()


def test_column_check_dopants_say_so_and_carry_their_own_confidence():
    """A bright dopant the network missed but the column intensities show is reported with
    source 'column check', its z-score, and a confidence from that z-score that passes threshold."""
    from napari_microml.defects import columns as C
    from napari_microml.synth.lattice import DOPANT_BRIGHT, INTERSTITIAL

    # the confidence's calibration: both of the check's acceptance rules sit at exactly 0.5
    assert C.rescue_confidence(C.Z_RESCUE, 0.0) == pytest.approx(0.5)
    assert C.rescue_confidence(C.Z_WEAK, C.P_WEAK) == pytest.approx(0.5)
    conf = C.rescue_confidence(np.linspace(3, 8, 11), 0.0)
    assert (np.diff(conf) > 0).all() and conf[0] < 0.01 and conf[-1] > 0.999
    assert C.rescue_confidence(4.5, 0.3) > C.rescue_confidence(4.5, 0.1)

    s = simulate_defects(
        (160, 160),
        seed=HELD_OUT + 41,
        dose=2000,
        scene="crystal",
        lattice="square",
        spacing=11,
        contrast="bright",
    )
    cols = s.positions[s.kinds != INTERSTITIAL]
    truth = s.positions[s.kinds == DOPANT_BRIGHT]
    assert len(truth) >= 2
    r = segment_defects(s.image, model=_SilentNet.make(), atoms=cols, device="cpu", rescale="off")
    t = r.table
    assert (
        len(t) >= 1
        and (t["source"] == "column check").all()
        and (t["class"] == "dopant_bright").all()
    )
    assert (t["confidence"] >= 0.5).all() and (t["column_z"] >= C.Z_WEAK).all()
    d = np.hypot(*(t[["row", "col"]].to_numpy()[:, None] - truth[None]).transpose(2, 0, 1)).min(1)
    assert (d < 1.0).all()  # each one on a planted bright dopant's column
    # the threshold applies to this confidence too: one between the weakest and the others drops it
    weakest = float(t["confidence"].min())
    assert weakest < t["confidence"].max()
    cut = (weakest + float(t["confidence"].max())) / 2
    strict = segment_defects(
        s.image, model=_SilentNet.make(), atoms=cols, device="cpu", rescale="off", threshold=cut
    )
    assert len(strict.table) == (t["confidence"] >= cut).sum() < len(t)
    assert (strict.table["confidence"] >= cut).all()
    # the network's own defects say so
    assert set(segment_defects(s.image, atoms=cols, device="cpu").table["source"]) <= {
        "network",
        "column check",
    }


def test_scattered_single_atoms_get_no_column_check_dopant(shared_data):
    """Pt atoms on amorphous carbon (image 037 gained a z = 5.2 'dopant' among 15 scattered atoms
    judged as if they were a sublattice): no column has a sublattice, so none is judged or added."""
    import tifffile

    from napari_microml.defects import columns as C

    path = sorted((shared_data / "atoms_pt_haadf" / "images").glob("037_*.tif"))[0]
    image = tifffile.imread(path).astype(np.float32)
    r = segment_defects(image, device="cpu")
    assert r.provenance["parameters"]["column_check"] is True
    assert not (r.table["source"] == "column check").any()
    from scipy.spatial import cKDTree

    spacing = float(np.median(cKDTree(r.atoms).query(r.atoms, k=2)[0][:, 1]))
    _, z = C.sublattice_contrast(r.atoms, C.column_heights(image, r.atoms, spacing))
    assert len(r.atoms) >= 20 and np.isnan(z).all()


@pytest.mark.parametrize("model", ["auto", "default"])
def test_segmenter_finds_columns_with_the_lattice_model(moderate, monkeypatch, model):
    """The segmenter's networks read a lattice's columns: its own atom-finder pass must use the
    lattice model, not the finder's default ("auto" may pick the single-atom model)."""
    import napari_microml.atoms.finder as finder

    seen = []
    real = finder.find_atoms_iter

    def spy(image, **kwargs):
        seen.append(kwargs.get("model", "<finder default>"))
        return real(image, **kwargs)

    monkeypatch.setattr(finder, "find_atoms_iter", spy)
    segment_defects(moderate[0].image, model=model, device="cpu")
    assert seen and set(seen) == {"default"}, seen


def test_point_defects_cut_by_the_image_edge_are_dropped_and_counted():
    """Within half a column spacing of the border a column's neighbourhood is cut, so a vacancy,
    dim dopant or interstitial there is not reported (a bright dopant is: a cut never brightens);
    the number dropped is returned for the status line."""
    from napari_microml.defects.segment import _drop_at_edge

    columns = np.stack(np.meshgrid(np.arange(5, 100, 10.0), np.arange(5, 100, 10.0)), -1)
    columns = columns.reshape(-1, 2)
    labels = np.zeros((100, 100), np.int32)
    where = [(2, 50), (50, 50), (97, 30), (50, 1)]  # edge, inside, edge, edge
    kinds = ["vacancy", "vacancy", "dopant_bright", "interstitial"]
    for i, (r, c) in enumerate(where, start=1):
        labels[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = i
    st = {
        "class_id": np.array([class_id(k) for k in kinds]),
        "row": np.array([float(r) for r, _ in where]),
        "col": np.array([float(c) for _, c in where]),
    }
    kept, kept_st, dropped = _drop_at_edge(labels, st, columns, labels.shape, 0.5)
    assert dropped == 2
    assert [CLASS_NAMES[i - 1] for i in kept_st["class_id"]] == ["vacancy", "dopant_bright"]
    assert kept.max() == 2 and kept[50, 50] == 1 and kept[97, 30] == 2 and kept[2, 50] == 0
