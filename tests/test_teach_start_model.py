"""Teach starts from the model the Atom finder used on the corrected points, and the new model
is judged against that one (a model worse than the user's own is never handed over)."""

from __future__ import annotations

import numpy as np
import pytest
from journey import click, open_tool

from napari_microml.atoms import teach_widget
from napari_microml.atoms.choose import LATTICE_MODEL, SINGLE_ATOMS_MODEL
from napari_microml.nets import user_models
from napari_microml.runtime.provenance import make_provenance
from napari_microml.synth.lattice import simulate_lattice

pytestmark = pytest.mark.usefixtures("one_torch_thread", "user_models_folder")


def _finder_record(model: str) -> dict:
    """The provenance the Atom finder writes on its Points layer when Model auto chose ``model``."""
    return make_provenance(
        "atom_finder",
        parameters={"model": "auto", "model_choice": {"chosen": model, "reason": "test"}},
        model={"name": f"atoms-{model}", "file": f"atoms-{model}.pt", "sha256": "0"},
    )


def _teach_on_a_single_atom_result(make_napari_viewer, qtbot):
    """A viewer with Teach open and one pair whose points pt-single-atoms found, selected."""
    viewer = make_napari_viewer()
    teach = open_tool(viewer, "Teach the atom finder")
    viewer.add_image(np.zeros((32, 32), np.float32), name="a")
    viewer.add_points(
        np.array([[5.0, 5.0]]),
        name="a atoms",
        metadata={"napari_microml": _finder_record(SINGLE_ATOMS_MODEL)},
    )
    qtbot.wait(50)
    teach.pairs.value = ["a ← a atoms"]
    return viewer, teach


def _fine_tune_asked(monkeypatch, viewer, qtbot, teach) -> dict:
    """Correct the points of 'a' and press Fine-tune; return what the dock asked the
    fine-tune for (it stops there)."""
    seen: dict = {}

    def spy(images, positions, **kwargs):
        seen.update(kwargs)
        raise ValueError("recorded")

    monkeypatch.setattr(teach_widget, "finetune_atoms_iter", spy)
    viewer.layers["a atoms"].data = np.array([[6.0, 6.0], [9.0, 20.0], [20.0, 9.0]])
    click(qtbot, teach.run_button, teach)
    return seen


def test_teach_starts_from_the_single_atom_model_the_finder_chose(
    make_napari_viewer, qtbot, monkeypatch
):
    sample = simulate_lattice((192, 192), scene="single_atoms", dose=1000, seed=2)
    viewer = make_napari_viewer()
    image = viewer.add_image(sample.image.astype(np.float32), name="pt")
    finder = open_tool(viewer, "Atom finder")
    assert finder.model.value == "auto"
    finder.image_layer.value = image
    click(qtbot, finder.run_button, finder)
    assert f"Model auto → {SINGLE_ATOMS_MODEL}" in finder.status.value, finder.status.value

    teach = open_tool(viewer, "Teach the atom finder")
    assert teach.base.value == SINGLE_ATOMS_MODEL
    assert teach.base_note.value == "(what the Atom finder used on these images)"

    seen = {}
    real = teach_widget.finetune_atoms_iter

    def spy(images, positions, **kwargs):
        seen.update(kwargs)
        return (yield from real(images, positions, **kwargs))

    monkeypatch.setattr(teach_widget, "finetune_atoms_iter", spy)
    viewer.layers["pt atoms"].data = sample.positions  # the corrected points
    qtbot.waitUntil(lambda: teach.pairs.value == ["pt ← pt atoms"], timeout=5_000)
    assert teach.base.value == SINGLE_ATOMS_MODEL  # still, after the edit
    teach.steps.value = 2
    click(qtbot, teach.run_button, teach, timeout_ms=120_000)
    assert seen["base"] == SINGLE_ATOMS_MODEL
    # saved or kept, the comparison named is against the model the user was using
    assert SINGLE_ATOMS_MODEL in teach.status.value, teach.status.value
    for card in user_models.list_user_models("atoms").values():
        assert card["base"] == f"atoms-{SINGLE_ATOMS_MODEL}"


def test_disagreeing_or_hand_made_points_start_from_the_lattice_model(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    teach = open_tool(viewer, "Teach the atom finder")
    for name, model in (("a", SINGLE_ATOMS_MODEL), ("b", LATTICE_MODEL)):
        viewer.add_image(np.zeros((32, 32), np.float32), name=name)
        viewer.add_points(
            np.array([[5.0, 5.0], [20.0, 20.0]]),
            name=f"{name} atoms",
            metadata={"napari_microml": _finder_record(model)},
        )
    qtbot.wait(50)
    teach.pairs.value = ["a ← a atoms"]
    assert teach.base.value == SINGLE_ATOMS_MODEL
    teach.pairs.value = ["a ← a atoms", "b ← b atoms"]
    assert teach.base.value == LATTICE_MODEL
    assert teach.base_note.value == (
        f"(the lattice model: the Atom finder used {SINGLE_ATOMS_MODEL} on 'a atoms'; "
        f"{LATTICE_MODEL} on 'b atoms')"
    )

    viewer.add_image(np.zeros((32, 32), np.float32), name="c")
    viewer.add_points(np.array([[5.0, 5.0]]), name="c atoms")  # drawn by hand
    qtbot.wait(50)
    teach.pairs.value = ["a ← a atoms", "c ← c atoms"]
    assert teach.base.value == LATTICE_MODEL
    assert "'c atoms' did not come from the Atom finder" in teach.base_note.value


def test_the_users_own_choice_of_start_model_is_kept(make_napari_viewer, qtbot, monkeypatch):
    viewer, teach = _teach_on_a_single_atom_result(make_napari_viewer, qtbot)
    assert teach.base.value == SINGLE_ATOMS_MODEL
    teach.base.value = LATTICE_MODEL  # the user picks another
    assert teach.base_note.value.startswith("(your choice; suggested: pt-single-atoms")
    viewer.add_image(np.zeros((32, 32), np.float32), name="b")  # layers change: choice stays
    qtbot.wait(50)
    teach.pairs.value = ["a ← a atoms"]
    assert teach.base.value == LATTICE_MODEL

    # fine-tuned from the user's pick, the new model must also beat the model in use
    seen = _fine_tune_asked(monkeypatch, viewer, qtbot, teach)
    assert seen["base"] == LATTICE_MODEL and seen["in_use"] == SINGLE_ATOMS_MODEL


def test_deleting_the_picked_start_model_follows_the_finder_again(make_napari_viewer, qtbot):
    from napari_microml.nets.registry import load_model
    from napari_microml.training.atoms import ARCH

    net, _ = load_model("atoms", LATTICE_MODEL, "cpu")
    user_models.save_user_model(
        net, "mine", task="atoms", arch=ARCH, meta={"input": "flatten"}, card={}
    )
    viewer, teach = _teach_on_a_single_atom_result(make_napari_viewer, qtbot)
    teach.base.value = "mine"
    assert teach.base_note.value.startswith("(your choice")
    teach.my_models.value = "mine"
    teach.delete_button.native.click()
    teach.delete_button.native.click()  # the second click confirms
    assert "mine" not in teach.base.choices
    assert teach.base.value == SINGLE_ATOMS_MODEL
    assert teach.base_note.value == "(what the Atom finder used on these images)"


def test_teach_levels_a_layer_from_an_spm_file_as_the_finder_does(
    make_napari_viewer, qtbot, monkeypatch
):
    """A layer read from an STM/AFM file trains on the frame the finder levels (scan 'spm');
    an electron image's stays 'auto'."""
    viewer, teach = _teach_on_a_single_atom_result(make_napari_viewer, qtbot)
    viewer.layers["a"].metadata = {"napari_microml": {"scan": {"kind": "spm"}}}
    seen = _fine_tune_asked(monkeypatch, viewer, qtbot, teach)
    assert seen["scan"] == ["spm"]
    viewer.layers["a"].metadata = {}
    click(qtbot, teach.run_button, teach)
    assert seen["scan"] == ["auto"]
