"""Journeys from the session-19 GUI audit (helper C2): each test drives a dock the way the
Plugins menu opens it, with its defaults, and fails on the code before its fix."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from journey import open_tool

from napari_microml.synth.lattice import simulate_lattice

pytestmark = pytest.mark.usefixtures("one_torch_thread", "user_models_folder")


def test_a_big_frames_progress_names_each_slow_stage(make_napari_viewer, qtbot, monkeypatch):
    """Atom finder on a 4096² frame: "Running…" with an empty bar for 14 s (repairing and
    levelling the scan), then "tile 36/36" with a full bar for 9 s (finding the peaks). Here the
    same stages are made slow: the status names each while it runs, and the bar is not full
    while the peaks are still to be found."""
    import napari_microml.atoms.finder as finder

    real_level, real_maxima = finder.prepare_frame, finder.local_maxima

    def slow_level(frame, **kwargs):
        time.sleep(0.4)
        return real_level(frame, **kwargs)

    def slow_maxima(*args, **kwargs):
        time.sleep(0.4)
        return real_maxima(*args, **kwargs)

    monkeypatch.setattr(finder, "prepare_frame", slow_level)
    monkeypatch.setattr(finder, "local_maxima", slow_maxima)
    viewer = make_napari_viewer()
    sample = simulate_lattice((160, 160), scene="crystal", seed=3)
    viewer.add_image(sample.image.astype(np.float32), name="haadf")
    w = open_tool(viewer, "Atom finder")
    shown: list[tuple[str, int, int]] = []
    say = w._say

    def record(text):
        shown.append((text, w.progress.value, w.progress.max))
        say(text)

    w._say = record
    w.run_button.native.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    texts = [text for text, *_ in shown]
    assert texts[-1].startswith("Found"), texts
    # the first stage is named while it runs, before the network
    assert texts[1] == "reading the image", texts
    checking = [i for i, t in enumerate(texts) if "checking the scan" in t]
    peaks = [i for i, t in enumerate(texts) if "finding the column peaks" in t]
    # shown although it came right after the last tile (the throttle used to drop it)
    assert checking and peaks and checking[0] < peaks[0], texts
    for text, value, top in shown:
        if "tile" in text or "finding the column peaks" in text:
            assert value < top, (text, value, top)


def test_a_throttled_progress_message_is_shown_later(make_napari_viewer, qtbot):
    """Two progress messages inside the throttle interval: the second is shown once the
    interval has passed, not dropped (it may name a stage that lasts seconds)."""
    viewer = make_napari_viewer()
    w = open_tool(viewer, "Atom finder")
    w._ended = False  # as during a run
    assert w._show_progress(1, 10, "tile 1/9")
    assert not w._show_progress(9, 10, "finding the column peaks")
    assert "tile 1/9" in w.status.value
    qtbot.waitUntil(lambda: "finding the column peaks" in w.status.value, timeout=2000)
    assert w.progress.value == 9
    w._ended = True  # a held message never overwrites the run's last word
    w._show_progress(1, 10, "a")
    w._show_progress(2, 10, "b")
    w._say("Done.")
    time.sleep(0.2)
    qtbot.wait(50)
    assert w.status.value == "Done."


def test_progress_after_cancel_does_not_hide_cancelling(make_napari_viewer, qtbot):
    """Teach: Stop said "Stopping…", then the steps already on their way overwrote it ("step 35/600:
    loss 0.28") until the run ended: the user could not tell the Stop was taken."""
    viewer = make_napari_viewer()
    w = open_tool(viewer, "Atom finder")
    w._ended, w._cancel_asked = False, True  # as right after Cancel, before the worker stops
    w._say("Cancelling…")
    w._on_yield(("progress", 3, 10, "frame 1/1: tile 3/9"))
    w._on_yield(("progress", 0, 0, "loading the model"))
    assert w.status.value == "Cancelling…"
    assert w.progress.value == 3  # the bar still moves


def test_edits_made_before_teach_opened_are_counted(make_napari_viewer, qtbot):
    """Pt/C journey: Atom finder on two images, points corrected, then Teach opened from the
    Plugins menu: "Your edits: +0 added, −0 removed" for both (Teach took the edited points as
    the finder's)."""
    viewer = make_napari_viewer()
    sample = simulate_lattice((128, 128), scene="crystal", seed=2)
    viewer.add_image(sample.image.astype(np.float32), name="xtal")
    finder = open_tool(viewer, "Atom finder")
    finder.run_button.native.click()
    qtbot.waitUntil(lambda: not finder.busy, timeout=120_000)
    points = viewer.layers["xtal atoms"]
    found = np.asarray(points.data)
    points.data = np.concatenate([found[2:], [[5.0, 5.0]]])  # 2 removed, 1 added
    teach = open_tool(viewer, "Teach the atom finder")
    assert "+1 added, −2 removed" in teach.edits.value, teach.edits.value
    # a later finder run is the new reference: no edits
    finder.run_button.native.click()
    qtbot.waitUntil(lambda: not finder.busy, timeout=120_000)
    qtbot.waitUntil(lambda: "+0 added, −0 removed" in teach.edits.value, timeout=5000)


def test_the_kept_base_sentence_names_the_held_out_part_of_each_image(
    monkeypatch, tmp_path, one_torch_thread
):
    """Teach on Pt/C: "on your held-out points (the 0.2 strip of each image)": which strip? Now
    the sentence names the edge and the image ("the bottom 20% of 021 and the left 20% of 025")."""
    import napari_microml.atoms.finetune as ft
    from napari_microml.nets import user_models

    monkeypatch.setenv(user_models.ENV, str(tmp_path / "models"))
    monkeypatch.setattr(ft, "LR", 1.0)  # a wrecked network: the base is kept
    samples = [
        simulate_lattice((128, 128), scene="crystal", lattice="square", spacing=9.0, seed=s)
        for s in (11, 12)
    ]
    gen = ft.finetune_atoms_iter(
        [s.image for s in samples],
        [s.positions for s in samples],
        steps=2,
        image_names=["scan 021", "scan 025"],
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result = stop.value
            break
    assert result.kept_base, result.reason
    assert "strip" not in result.reason and "0.2" not in result.reason, result.reason
    edges = r"(top|bottom|left|right)"
    assert re.search(
        rf"\(the {edges} 20% of scan 021 and the {edges} 20% of scan 025\)", result.reason
    ), result.reason


def test_the_segmenters_warm_up_runs_every_kernel_a_new_labels_layer_needs(
    make_napari_viewer, monkeypatch
):
    """The Defect segmenter's first Run froze the window ~1 s while its labels layer was made:
    napari compiled a label-colour kernel (the default colormap's, used to size the texture)
    on the GUI thread; the warm-up in the worker had run only the class colormap's."""
    from types import SimpleNamespace

    import napari.utils.colormaps._accelerated_cmap as accel
    import pandas as pd

    from napari_microml.defects.classes import CLASS_COLORS
    from napari_microml.defects.widget import _warm_label_colormap, class_colormap

    seen: list[tuple] = []
    for name in ("_zero_preserving_modulo_inner_loop", "_labels_raw_to_texture_direct_inner_loop"):
        real = getattr(accel, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            arrays = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
            seen.append((_name, tuple((a.dtype.str, a.ndim) for a in arrays)))
            return _real(*args, **kwargs)

        monkeypatch.setattr(accel, name, spy)
    labels = (np.arange(64 * 64, dtype=np.int32).reshape(64, 64) // 700) % 3  # as segment writes
    table = pd.DataFrame({"label": [1, 2], "class": list(CLASS_COLORS)[:2]})
    _warm_label_colormap(SimpleNamespace(labels=labels.astype(np.int32), table=table))
    warmed = set(seen)
    seen.clear()
    viewer = make_napari_viewer()
    viewer.add_labels(labels.astype(np.int32), colormap=class_colormap(table))
    used = set(seen)
    assert used and used <= warmed, f"compiled on the GUI thread: {used - warmed}"
