"""Cancel points in the environment clustering: the Defect segmenter's Cancel acts between steps.

A napari worker stops at its job's next yield, so the environment step must yield often and give
the same result as the plain function when it is not stopped.
"""

import math
import time

import numpy as np
import pytest
from test_defects_environments import _scene
from threadpoolctl import threadpool_info, threadpool_limits

from napari_microml.defects.environments import (
    CHUNK,
    classify_environments,
    classify_environments_iter,
)
from napari_microml.runtime.workers import Progress, as_message
from napari_microml.synth.defects import simulate_defects


def _timed(gen):
    """Run a generator to its end: (messages, result, longest gap s, total s)."""
    start = last = time.perf_counter()
    messages, worst = [], 0.0
    while True:
        try:
            message = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
        messages.append(message)
    end = time.perf_counter()
    return messages, result, max(worst, end - last), end - start


@pytest.fixture(scope="module")
def big_lattice():
    """A 1024² perovskite with dim dopants and a few interstitials: ~7000 columns, 5 classes."""
    image, pos, _ = _scene(3, size=1024, spacing=12.0, dim_frac=0.1, odd=5)
    return image, pos


def test_iter_splits_the_work_and_gives_the_plain_result(big_lattice):
    image, pos = big_lattice
    messages, res, gap, total = _timed(classify_environments_iter(image, pos))
    plain = classify_environments(image, pos)
    for name in ("classes", "probability", "unusualness", "unusual", "edge"):
        assert np.array_equal(getattr(res, name), getattr(plain, name)), name
    assert res.bic == plain.bic and res.n_classes == plain.n_classes >= 3
    texts = [as_message(m).text for m in messages]  # every message is a well-formed progress
    n_desc = sum("descriptors" in t for t in texts)
    assert n_desc == 1 + math.ceil(len(pos) / CHUNK)  # the frame, then every chunk of atoms
    assert sum("pass 1: mixture" in t for t in texts) == len(res.bic) == 8  # BIC over 1 … 8
    # no one step holds most of the run (timings vary with load: a generous bound)
    assert gap < 1.5 and gap < 0.5 * total, (gap, total)


def test_closing_mid_fit_leaves_blas_threads_alone(big_lattice):
    image, pos = big_lattice
    with threadpool_limits(2):  # two threads even where OMP_NUM_THREADS=1, so a limit shows
        before = [lib["num_threads"] for lib in threadpool_info()]
        gen = classify_environments_iter(image, pos)
        for message in gen:
            if "pass 1: mixture 3/" in message[-1]:
                break
        else:
            pytest.fail("no mixture step was yielded")
        # suspended between steps: the one-thread limit is only held while a step computes
        assert [lib["num_threads"] for lib in threadpool_info()] == before
        gen.close()  # what a Cancel does
        assert [lib["num_threads"] for lib in threadpool_info()] == before


def test_segmenter_job_yields_inside_the_environment_step(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    sample = simulate_defects(
        (192, 192), seed=5_700_001, dose=500, scene="crystal", lattice="square", spacing=11
    )
    viewer.add_image(sample.image, name="haadf")
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Defect segmenter")
    widget.image_layer.value = viewer.layers["haadf"]
    widget.device_choice.value = "cpu"
    before = [layer.name for layer in viewer.layers]
    texts = []
    run = widget.make_job().run()  # the worker's body, driven here one yield at a time
    for raw in run:
        message = as_message(raw)
        texts.append(message.text if isinstance(message, Progress) else "")
        if "environments, pass 1: mixture 1/" in texts[-1]:
            break
    else:
        pytest.fail(f"the job never yielded inside the environment fit: {texts[-5:]}")
    assert any("environments: descriptors" in t for t in texts)
    run.close()  # Cancel here: no layer was written
    assert [layer.name for layer in viewer.layers] == before
