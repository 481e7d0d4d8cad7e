"""Journey: correct the atom finder's points on two real images, teach it, stop once, teach it
again; the finder re-runs the third image (not corrected) with the new model at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
from journey import assert_no_stall, assert_visible, click, open_file, open_tool

from napari_microml.atoms.finetune import count_edits
from napari_microml.atoms.metrics import match_boxes
from napari_microml.cli import main as cli_main
from napari_microml.nets import user_models


def _labels(folder, layer):
    """The human labels of a Pt/C image: (row, col) px."""
    table = pd.read_csv(folder / "labels" / (layer.name.split("_")[0] + "_Results.csv"))
    return table[["Y", "X"]].to_numpy(float)


def test_teach_the_atom_finder_on_two_corrected_images(
    make_napari_viewer, qtbot, shared_data, tmp_path, monkeypatch, capsys, one_torch_thread
):
    monkeypatch.setenv(user_models.ENV, str(tmp_path / "models"))
    folder = shared_data / "atoms_pt_haadf"
    viewer = make_napari_viewer()
    viewer.window.resize(1600, 1150)  # room for two docks beside the image
    images = [open_file(viewer, p)[0] for p in sorted((folder / "images").glob("*.tif"))[:3]]
    finder = open_tool(viewer, "Atom finder")
    for layer in images[:2]:
        finder.image_layer.value = layer
        click(qtbot, finder.run_button, finder)
        # single atoms on carbon: the default Model "auto" chose the single-atom model
        assert "Model auto → pt-single-atoms" in finder.status.value, finder.status.value
    teach = open_tool(viewer, "Teach the atom finder")
    expected = {f"{im.name} ← {im.name} atoms" for im in images[:2]}
    assert set(teach.pairs.value) == expected
    # Teach starts from the model the finder used: a new model must beat that one
    assert teach.base.value == "pt-single-atoms"
    assert teach.base_note.value == "(what the Atom finder used on these images)"
    for layer in images[:2]:  # the person's labels are the corrected points
        points = viewer.layers[f"{layer.name} atoms"]
        found, labels = np.asarray(points.data), _labels(folder, layer)
        points.data = labels
        counts = count_edits(found, labels)
        assert counts["added"] + counts["removed"] > 0
        line = (
            f"{points.name}: +{counts['added']} added, −{counts['removed']} removed, "
            f"{counts['moved']} moved"
        )
        # the full name is in the tooltip; the dock shows it cut in the middle
        qtbot.waitUntil(lambda line=line: line in teach.edits.tooltip, timeout=5_000)

    # a result on a third image that the user leaves as it is: not used for teaching
    finder.image_layer.value = images[2]
    click(qtbot, finder.run_button, finder)
    assert set(teach.pairs.value) == expected

    # Stop part-way: nothing is written
    teach.steps.value = 5000
    teach.run_button.native.click()
    assert teach.run_button.text == "Stop"
    qtbot.waitUntil(lambda: teach.progress.value >= 3, timeout=120_000)
    teach.run_button.native.click()
    qtbot.waitUntil(lambda: teach.worker is None, timeout=120_000)
    assert teach.run_button.text == "Fine-tune"
    assert teach.status.value.startswith("Stopped: no model was written"), teach.status.value
    assert user_models.list_user_models() == {}
    folder_now = tmp_path / "models"
    assert not folder_now.exists() or not any(folder_now.iterdir())

    # 50 steps from pt-single-atoms do not beat its own F1 on the held-out labels (0.806): the
    # user keeps the model they had, and nothing is written
    teach.steps.value = 50
    click(qtbot, teach.run_button, teach)
    kept = teach.status.value
    assert kept.startswith("Kept the base model 'pt-single-atoms'"), kept
    assert user_models.list_user_models() == {}

    # The user picks the lattice model to start from: saved, listed in the Atom finder and
    # selected there
    teach.base.value = "default"
    assert teach.base_note.value.startswith("(your choice; suggested: pt-single-atoms")
    teach.steps.value = 100  # 50 from default stay below pt-single-atoms' 0.806
    stall = click(qtbot, teach.run_button, teach)
    assert_no_stall(stall, "fine-tuning")
    assert "Saved" in teach.status.value, teach.status.value
    assert "cpu" in teach.ran_on.value.lower() or "cuda" in teach.ran_on.value.lower()
    (name,) = [n.removeprefix("atoms-") for n in user_models.list_user_models()]
    assert name in finder.model.choices and finder.model.value == name
    assert name in teach.my_models.choices
    assert len(teach._history) >= 2 and teach._history[-1]["step"] == 100
    card = user_models.list_user_models()[f"atoms-{name}"]
    assert card["base"] == "atoms-default" and "(default)" in teach.status.value
    # it had to beat the model the user was running too, not only its start
    assert card["validation"]["in_use"] == "atoms-pt-single-atoms"
    assert card["validation"]["f1_after"] > card["validation"]["f1_in_use"]
    assert card["n_points"] == sum(len(_labels(folder, im)) for im in images[:2])
    assert card["validation"]["f1_after"] > card["validation"]["f1_before"]
    assert card["provenance"]["parameters"]["contrast"] == "bright"  # as the finder decided
    capsys.readouterr()
    assert cli_main(["models"]) == 0
    listed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"atoms-{name}\t")]
    assert len(listed) == 1 and "yours" in listed[0], (
        listed
    )  # `microml models` lists it as the user's

    # The third image is re-run at once with the new model and its threshold; the corrected
    # images keep the user's points
    def rerun_done():
        record = viewer.layers[f"{images[2].name} atoms"].metadata["napari_microml"]
        return not finder.busy and record["model"]["name"] == f"atoms-{name}"

    qtbot.waitUntil(rerun_done, timeout=120_000)
    result = viewer.layers[f"{images[2].name} atoms"]
    assert repr(images[2].name) in teach.status.value, teach.status.value
    for layer in images[:2]:
        kept = np.asarray(viewer.layers[f"{layer.name} atoms"].data)
        np.testing.assert_allclose(kept, _labels(folder, layer))
    assert set(teach.pairs.value) == expected  # an uncorrected result is not used for teaching
    record = result.metadata["napari_microml"]
    assert record["model"]["name"] == f"atoms-{name}"
    assert record["parameters"]["threshold"] == card["meta"]["recommended_threshold"]
    assert "unsure" not in finder.status.value  # no advice to fine-tune the model just tuned
    f1 = match_boxes(np.asarray(result.data), _labels(folder, images[2]))["f1"]
    assert f1 > 0.3, f1
    assert_visible(viewer, result, screenshot=tmp_path / "teach.png")

    # Review walks the least certain detections; delete takes two clicks
    teach.pairs.value = [f"{images[2].name} ← {images[2].name} atoms"]
    teach.next_uncertain.native.click()
    assert "point 1 of" in teach.status.value and len(result.selected_data) == 1
    teach.my_models.value = name
    teach.delete_button.native.click()
    assert user_models.list_user_models() != {}
    teach.delete_button.native.click()
    assert user_models.list_user_models() == {}
    assert name not in finder.model.choices
