"""The DKL surrogate gives the numbers it gave before its refactor into BoTorch's shape.

``test_dkl_reference.json`` holds predictions, posterior samples, embeddings, fit summaries
and whole campaigns recorded with the code before the refactor (module-level ``ExactGP``,
``Surrogate`` protocol, outcome transform); the same seeds must give the same numbers (to
float rounding) and exactly the same measured pixels. Tiny image, few iterations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_microml.dkl.ensemble import DKLEnsemble, MultiScaleEnsemble, member_seed
from napari_microml.dkl.learner import run_campaign
from napari_microml.dkl.model import DKLModel, one_thread
from napari_microml.dkl.surrogate import Surrogate
from napari_microml.synth.properties import structure_property_pair

REFERENCE = json.loads((Path(__file__).with_suffix(".json")).read_text())
RTOL = 1e-6  # the reference is rounded to 12 digits; the ensemble's mixing order moved 1 ulp

pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


@pytest.fixture(scope="module")
def data():
    s, p = structure_property_pair((20, 24), kind="phases", seed=5, noise=0.02)
    values = p.ravel() * 37.0 + 5.0  # not in standard units: the outcome transform matters
    idx = np.random.default_rng(0).choice(p.size, 30, replace=False)
    return s, values, idx, np.arange(0, p.size, 53)


def _models(s):
    return {
        "cnn": lambda: DKLModel(s, patch_size=5, device="cpu", init_iters=25, warm_iters=8),
        "pca_mlp_matern_trend": lambda: DKLModel(
            s,
            patch_size=6,
            device="cpu",
            features="pca_mlp",
            kernel="matern",
            trend=True,
            init_iters=25,
            warm_iters=8,
            seed=3,
        ),
        "coords": lambda: DKLModel(s, patch_size=5, device="cpu", features="coords", init_iters=25),
        "ensemble2": lambda: DKLEnsemble(
            DKLModel(
                s,
                patch_size=5,
                device="cpu",
                features="mlp",
                init_iters=20,
                warm_iters=5,
                seed=1,
            ),
            n_models=2,
        ),
        "multiscale": lambda: MultiScaleEnsemble(
            [
                DKLModel(
                    s,
                    patch_size=p,
                    device="cpu",
                    init_iters=20,
                    warm_iters=5,
                    seed=member_seed(2, k),
                )
                for k, p in enumerate((4, 7))
            ]
        ),
    }


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=RTOL)


@pytest.mark.parametrize(
    "name", ["cnn", "pca_mlp_matern_trend", "coords", "ensemble2", "multiscale"]
)
def test_surrogates_reproduce_the_recorded_numbers(data, name):
    s, values, idx, probe = data
    ref = REFERENCE[name]
    with one_thread(True):
        m = _models(s)[name]()
        assert isinstance(m, Surrogate)
        m.fit(idx[:20], values[idx[:20]])
        state = m.fit(idx, values[idx])  # warm start
        mean, std = m.predict(probe)
        mean_gp, std_gp = m.predict(probe, standardized=True)
        samples = m.sample(probe[:6], 2, np.random.default_rng(4))
        embedding = m.embed()[probe[:4]]
    _close(mean, ref["mean"])
    _close(std, ref["std"])
    _close(mean_gp, ref["mean_std"])
    _close(std_gp, ref["std_std"])
    _close(samples, ref["sample"])
    _close(embedding, ref["embed"])
    got = state.as_dict()
    assert got.keys() == ref["state"].keys()
    for key, value in ref["state"].items():
        _close(got[key], value)


CAMPAIGNS = {
    "auto_power_ts": dict(target_warp="power"),
    "p5_pca_mlp_ei_rank": dict(
        patch_size=5,
        features="pca_mlp",
        acquisition="ei",
        target_warp="rank",
        maximize=False,
        n_models=2,
    ),
    "p5_cnn_ucb": dict(patch_size=5, acquisition="ucb", n_models=1),
}


@pytest.mark.parametrize("name", sorted(CAMPAIGNS))
def test_campaigns_measure_the_recorded_pixels(data, name):
    s, values, _, probe = data
    ref = REFERENCE["campaigns"][name]
    r = run_campaign(
        s,
        values.reshape(s.shape),
        budget=26,
        n_initial=6,
        batch_size=4,
        seed=7,
        device="cpu",
        init_iters=20,
        warm_iters=5,
        **CAMPAIGNS[name],
    )
    assert r.coords.ravel().tolist() == ref["coords"]
    mean, std = r.learner.predict()
    _close(mean.ravel()[probe], ref["mean"])
    _close(std.ravel()[probe], ref["std"])
