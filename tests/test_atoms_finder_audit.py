"""The atom finder's fixes from the session-15 audit: one column gives one detection (a weak
second peak beside it is merged, a resolved dumbbell is not), runs can be cancelled during the
network pass and the column fitting, spectra are refused before a job starts, and the "unsure"
advice follows the chosen model."""

from __future__ import annotations

import numpy as np
import pytest
from journey import open_file, open_tool

from napari_microml.atoms.finder import find_atoms_iter, lattice_spacing, merge_close

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PT_021 = "atoms_pt_haadf/images/021_HAADF_15nm_Sample_PtNC_21Oct20.tif"


def _dumbbells(shape=(256, 256), a=27.15, sep=5.0, sigma=1.4, seed=0):
    """A [110] diamond-like image: dumbbells of two columns ``sep`` px apart on a centred
    rectangular lattice (a × a/√2 px), Poisson noise; returns (image, true positions)."""
    b = a / np.sqrt(2)
    centres = [
        (i * a + oy, j * b + ox)
        for i in range(-1, int(shape[0] / a) + 2)
        for j in range(-1, int(shape[1] / b) + 2)
        for oy, ox in ((0.0, 0.0), (a / 2, b / 2))
    ]
    p = np.array([(y + s, x) for y, x in centres for s in (-sep / 2, sep / 2)])
    p = p[((p > 3) & (p < np.array(shape) - 3)).all(axis=1)]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    for y, x in p:
        image += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    rng = np.random.default_rng(seed)
    return rng.poisson(200 * image + 20).astype(float), p


def test_a_resolved_dumbbell_lattice_keeps_every_column():
    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points

    image, truth = _dumbbells()
    # every column's nearest neighbour is its partner, 5 px away: that *is* the local spacing
    assert lattice_spacing(truth) == pytest.approx(5.0, abs=0.01)
    assert merge_close(truth, np.ones(len(truth))).all()
    found = mm.find_atoms(image).positions
    pairs = match_points(found, truth, 1.5)["pairs"]
    assert len(found) == len(truth) == len(pairs)


def _square(n=12, a=20.0):
    g = np.arange(n) * a + 10
    return np.array([(y, x) for y in g for x in g], float)


def test_a_weak_second_peak_beside_a_column_is_merged_into_it():
    columns = _square()
    spurious = columns[30] + (5.0, 3.0)  # 0.29 of the 20 px spacing from column 30
    positions = np.vstack([columns, spurious])
    scores = np.r_[np.full(len(columns), 0.9), 0.55]
    keep = merge_close(positions, scores)
    assert not keep[-1] and keep[:-1].all()
    # the better-scored of the two is kept, whichever it is
    keep = merge_close(positions, np.r_[np.full(len(columns), 0.9), 0.95])
    assert keep[-1] and not keep[30] and keep[:30].all() and keep[31:-1].all()
    # an interstitial at the cell centre, 0.71 spacings from four columns, is one of its own
    inter = np.vstack([columns, columns[30] + (10.0, 10.0)])
    assert merge_close(inter, np.r_[np.full(len(columns), 0.9), 0.55]).all()


def test_scattered_single_atoms_are_never_merged():
    rng = np.random.default_rng(1)
    atoms = rng.uniform(0, 500, (60, 2))
    atoms[1] = atoms[0] + (3.0, 0.0)  # two atoms close together on the support
    assert lattice_spacing(atoms) is None
    assert merge_close(atoms, rng.uniform(0.5, 1, 60)).all()


def _big_lattice(size=1024, a=12):
    """A clean square lattice of Gaussian columns, ``a`` px apart, filling a size² image."""
    from scipy import ndimage as ndi

    image = np.zeros((size, size))
    image[a // 2 :: a, a // 2 :: a] = 1.0
    return ndi.gaussian_filter(image, 1.5) + 0.01


def test_the_finder_yields_between_network_tiles_and_fit_chunks():
    image = _big_lattice()
    gen = find_atoms_iter(image, rescale="off")
    messages = []
    while True:
        try:
            messages.append(next(gen)[-1])
        except StopIteration as stop:
            result = stop.value
            break
    tiles = [m for m in messages if "tile" in m]
    fits = [m for m in messages if "fitted" in m]
    # a cancel point after every network tile and every fitted chunk, not only at the end
    assert len(tiles) >= 4, messages
    assert len(fits) >= 2 and messages.index(fits[0]) > messages.index(tiles[-1]), messages
    assert len(result.positions) == len(range(6, 1024, 12)) ** 2


@pytest.mark.parametrize(
    "tool, module, core",
    [
        ("Atom finder", "napari_microml.atoms.widget", "find_atoms_iter"),
        ("Defect segmenter", "napari_microml.defects.widget", "segment_defects_iter"),
    ],
)
def test_cancel_stops_a_one_image_run_before_its_end(
    make_napari_viewer, qtbot, monkeypatch, tool, module, core
):
    import importlib

    widget_module = importlib.import_module(module)
    run_core = getattr(widget_module, core)
    seen, finished = [], []

    def spy(*args, **kwargs):
        gen = run_core(*args, **kwargs)
        while True:
            try:
                message = next(gen)
            except StopIteration as stop:
                finished.append(stop.value)  # never reached when the run is cancelled
                return stop.value
            seen.append(message)
            yield message

    monkeypatch.setattr(widget_module, core, spy)
    viewer = make_napari_viewer()
    viewer.add_image(_big_lattice(), name="haadf")
    w = open_tool(viewer, tool)
    before = [layer.name for layer in viewer.layers]
    w.run_button.native.click()
    # the one 1024² image: Cancel during the first network pass
    qtbot.waitUntil(lambda: any("tile 1/" in str(m[-1]) for m in seen), timeout=60_000)
    w.run_button.native.click()
    pass_at_cancel = str(seen[-1][-1]).split("tile")[0]
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert not finished, "the run went on to its end after Cancel"
    # it stopped inside the network pass it was in, not after the next stage
    assert str(seen[-1][-1]).startswith(pass_at_cancel + "tile"), [m[-1] for m in seen]
    assert [layer.name for layer in viewer.layers] == before
    assert "Cancel" in w.status.value


def test_the_defect_segmenter_refuses_a_spectrum_image_before_running(
    make_napari_viewer, qtbot, shared_data
):
    viewer = make_napari_viewer()
    layer = open_file(viewer, shared_data / "formats" / "EELS_SI.dm4")[0]
    w = open_tool(viewer, "Defect segmenter")
    w.image_layer.value = layer
    w.run_button.native.click()
    assert w.worker is None, "the job was started on a spectrum image"
    assert "is a spectrum image" in w.status.value and "Spectral shift-VAE" in w.status.value


def test_unsure_advice_names_the_single_atom_model_and_trusts_it(shared_data):
    import tifffile

    import napari_microml as mm
    from napari_microml.atoms.finetune import unsure_note

    image = tifffile.imread(shared_data / PT_021).astype(float)
    note = unsure_note(mm.find_atoms(image, model="default"))  # the lattice model on Pt atoms
    assert "try Model: pt-single-atoms" in note, note
    # the model fine-tuned on these images, at its own threshold: no "unlike the training data"
    assert unsure_note(mm.find_atoms(image, model="pt-single-atoms", threshold=0.35)) == ""
