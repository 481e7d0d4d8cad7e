"""The atom finder's model="auto": lattice → 'default', isolated atoms → 'pt-single-atoms'."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import napari_microml as mm
from napari_microml.atoms.choose import (
    LATTICE_MODEL,
    SINGLE_ATOMS_MODEL,
    choose_atoms_model,
    image_period,
)
from napari_microml.atoms.finder import find_atoms_iter
from napari_microml.synth.lattice import lattice_sites, simulate_lattice


def _lattice(shape=(160, 160), seed=2):
    return simulate_lattice(
        shape, scene="crystal", lattice="square", spacing=10, dose=1000, seed=seed
    ).image


def _single_atoms(seed=2):
    return simulate_lattice((192, 192), scene="single_atoms", dose=1000, seed=seed).image


def test_evenly_spaced_columns_keep_the_lattice_model():
    rng = np.random.default_rng(0)
    sites = lattice_sites((200, 200), "triangular", 12.0, 0.3, rng)[0]
    sites = sites + rng.normal(0, 0.5, sites.shape)
    choice = choose_atoms_model(positions=sites, period=None)
    assert choice.chosen == LATTICE_MODEL and "evenly spaced" in choice.reason
    assert choice.column_spacing_px == pytest.approx(12.0, abs=1.0)
    # a calibrated image: the status line speaks nm, as the scale bar does
    nm = choose_atoms_model(positions=sites, period=None, pixel_size=0.03)
    assert "px" not in nm.reason and f"{choice.column_spacing_px * 0.03:.3g} nm" in nm.reason
    repeats = choose_atoms_model(positions=sites[:3], period=21.4, pixel_size=0.02)
    assert repeats.reason.endswith("repeats every 0.428 nm")


def test_scattered_atoms_choose_the_single_atom_model_unless_the_image_repeats():
    scattered = np.random.default_rng(1).uniform(0, 512, (40, 2))
    choice = choose_atoms_model(positions=scattered, period=None)
    assert choice.chosen == SINGLE_ATOMS_MODEL
    assert choice.reason == "no lattice: isolated atoms on an amorphous support"
    # columns the lattice model half missed, on an image that repeats: still a lattice
    repeats = choose_atoms_model(positions=scattered, period=21.4)
    assert repeats.chosen == LATTICE_MODEL and "repeats every 21.4 px" in repeats.reason
    # nothing found: no evidence of atoms, keep the lattice model
    assert choose_atoms_model(positions=np.zeros((0, 2)), period=None).chosen == LATTICE_MODEL


def test_image_period_sees_a_lattice_and_not_single_atoms():
    assert image_period(_lattice()) == pytest.approx(10.0, abs=1.0)
    assert image_period(_single_atoms()) is None


def test_auto_on_a_lattice_is_the_lattice_model_with_the_same_points():
    image = _lattice()
    auto = mm.find_atoms(image, model="auto", device="cpu")
    plain = mm.find_atoms(image, model="default", device="cpu")
    np.testing.assert_array_equal(auto.positions, plain.positions)
    choice = auto.parameters["model_choice"]
    assert choice["chosen"] == LATTICE_MODEL and choice["column_spacing_px"] == pytest.approx(10, 1)
    assert auto.parameters["model"] == "auto" and auto.model["name"] == "atoms-default"
    record = auto.provenance
    assert record["parameters"]["model_choice"] == choice
    assert record["model"]["sha256"] == plain.model["sha256"]
    json.dumps(record)  # provenance must stay writable as JSON


def test_auto_on_single_atoms_runs_the_single_atom_model_and_says_why():
    image = _single_atoms()
    auto = mm.find_atoms(image, model="auto", device="cpu")
    single = mm.find_atoms(image, model=SINGLE_ATOMS_MODEL, device="cpu")
    np.testing.assert_array_equal(auto.positions, single.positions)
    assert auto.model["name"] == f"atoms-{SINGLE_ATOMS_MODEL}"
    choice = auto.provenance["parameters"]["model_choice"]
    assert choice["chosen"] == SINGLE_ATOMS_MODEL and choice["column_spacing_px"] is None
    assert choice["reason"] == "no lattice: isolated atoms on an amorphous support"
    assert auto.provenance["model"]["name"] == f"atoms-{SINGLE_ATOMS_MODEL}"


def test_a_stack_is_judged_on_its_first_frame_and_the_choice_runs_on_every_frame():
    image = _single_atoms()
    stack = np.stack([image, image[::-1]])
    auto = mm.find_atoms(stack, model="auto", device="cpu")
    assert auto.parameters["model_choice"]["chosen"] == SINGLE_ATOMS_MODEL
    single = mm.find_atoms(stack, model=SINGLE_ATOMS_MODEL, device="cpu")
    np.testing.assert_array_equal(auto.positions, single.positions)
    assert sorted(set(auto.frames)) == [0, 1]
    steps = [m for kind, *_, m in find_atoms_iter(stack, model="auto")]
    assert steps[0].startswith("choosing the model: ")


def test_auto_is_the_finders_default():
    image = _lattice((96, 96))
    assert mm.find_atoms(image, device="cpu").parameters["model"] == "auto"


def test_the_widget_offers_auto_first_and_says_what_it_chose(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_lattice(), name="haadf")
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Atom finder")
    assert widget.model.choices[0] == "auto" and widget.model.value == "auto"
    assert {LATTICE_MODEL, SINGLE_ATOMS_MODEL} <= set(widget.model.choices)
    widget.image_layer.value = layer
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    status = widget.status.value
    assert "Model auto → default: a lattice: the columns are evenly spaced" in status, status
    assert status.startswith("Found ") and " columns, " in status, status
    record = viewer.layers["haadf atoms"].metadata["napari_microml"]
    assert record["parameters"]["model_choice"]["chosen"] == LATTICE_MODEL
    assert record["model"]["name"] == "atoms-default"


def test_cli_model_auto_records_the_choice(tmp_path):
    import tifffile

    from napari_microml import cli

    src = tmp_path / "pt.tif"
    tifffile.imwrite(src, _single_atoms().astype(np.float32), photometric="minisblack")
    out = tmp_path / "res"
    assert cli.main(["atoms", str(src), "--out", str(out), "--model", "auto", "--quiet"]) == 0
    prov = json.loads((out / "pt_atoms.provenance.json").read_text())
    assert prov["parameters"]["model"] == "auto"
    inner = prov["parameters"]["tool_provenance"]
    assert inner["parameters"]["model_choice"]["chosen"] == SINGLE_ATOMS_MODEL
    assert prov["model"]["name"] == f"atoms-{SINGLE_ATOMS_MODEL}"
    assert cli.model_choices("atoms")[0] == "auto"
    with pytest.raises(cli.InputError, match="not a atoms model|choose one of auto"):
        cli.run_tool("atoms", [src], tmp_path / "x", model="nonsense", progress=False)


def test_microml_models_explains_auto(capsys):
    from napari_microml import cli

    assert cli.main(["models"]) == 0
    assert "atoms --model auto (the default)" in capsys.readouterr().out


def test_the_status_counts_atoms_when_auto_reads_single_atoms(make_napari_viewer, qtbot):
    """Isolated atoms are not columns: the status says what was found in the user's terms."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(_single_atoms(), name="pt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Atom finder")
    widget.image_layer.value = layer
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    status = widget.status.value
    assert f"Model auto → {SINGLE_ATOMS_MODEL}" in status, status
    assert re.match(r"Found \d+ atoms, ", status), status


def _random_packing(seed=0, side=256, gap=30.0):
    """Atoms dropped at random, none closer than ``gap``, until the frame is full: evenly
    spaced (their nearest-neighbour distances spread little) but no lattice."""
    rng = np.random.default_rng(seed)
    pts: list = []
    for p in rng.uniform(0, side, (20000, 2)):
        if all(np.hypot(*(p - q)) >= gap for q in pts):
            pts.append(p)
    return np.array(pts)


def test_evenly_spaced_atoms_without_a_translation_are_no_lattice():
    """Old code: 'a lattice: the columns are evenly spaced' (Pt 047 at half its pixel size)."""
    from napari_microml.atoms.choose import translated_fraction
    from napari_microml.atoms.finder import lattice_spacing

    packed = _random_packing()
    assert lattice_spacing(packed) is not None  # evenly spaced by the spread rule alone
    choice = choose_atoms_model(positions=packed, period=None, shape=(256, 256))
    assert choice.chosen == SINGLE_ATOMS_MODEL and choice.reason.startswith("no lattice")
    # a small honeycomb particle (no column's nearest neighbour is a translation) stays one
    rng = np.random.default_rng(1)
    sites = lattice_sites((256, 256), "honeycomb", 24.0, 0.4, rng)[0]
    particle = sites[np.hypot(*(sites - 128).T) < 60] + rng.normal(0, 0.5, (1, 2))
    assert 15 <= len(particle) <= 40
    spacing = lattice_spacing(particle)
    assert spacing is not None and translated_fraction(particle, spacing) > 0.5
    kept = choose_atoms_model(positions=particle, period=None, shape=(256, 256))
    assert kept.chosen == LATTICE_MODEL and "evenly spaced" in kept.reason


PT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "atoms_pt_haadf"


@pytest.mark.skipif(not PT.exists(), reason="no shared data (../shared/data)")
def test_pt_047_at_half_its_pixel_size_runs_the_single_atom_model():
    """Old code kept the lattice model (18 atoms 'evenly spaced (1.79 nm)'; F1 0.369)."""
    import pandas as pd
    import tifffile
    from skimage.transform import rescale

    from napari_microml.atoms.metrics import match_boxes

    path = next((PT / "images").glob("047_*.tif"))
    image = rescale(tifffile.imread(path).astype(float), 0.5, order=3, anti_aliasing=True)
    truth = pd.read_csv(PT / "labels" / "047_Results.csv")[["Y", "X"]].to_numpy(float)
    r = mm.find_atoms(image, pixel_size=15 / 512 / 0.5)
    assert r.parameters["model_choice"]["chosen"] == SINGLE_ATOMS_MODEL
    assert match_boxes(r.positions, (truth + 0.5) * 0.5 - 0.5, box=10.5)["f1"] > 0.5
