"""Fine-tuning on a lattice keeps the base's low-dose crystals: every batch also replays simulated
crystals at 5-50 counts, where a model taught dim columns otherwise fires on noise between the
columns; on isolated atoms it does not (those crystals teach it to miss dim atoms). Figures:
notes/s17/B.md and benchmarks/finetune.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_microml.atoms import finetune as ft
from napari_microml.nets import user_models
from napari_microml.runtime.workers import collect
from napari_microml.synth import lattice as lattice_module
from napari_microml.synth.lattice import LATTICES, simulate_lattice
from napari_microml.training import common

MARK = -7.0  # a network input no real crop has: tells the low-dose replay crops apart


@pytest.fixture(autouse=True)
def models_folder(tmp_path, monkeypatch):
    """Never the real per-user folder."""
    monkeypatch.setenv(user_models.ENV, str(tmp_path / "models"))


@pytest.fixture
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _replayed_low_dose_crops(monkeypatch, samples, steps=3):
    """Run a few fine-tuning steps; return how many low-dose crystal crops each batch held."""

    def marked(seed, size, kind):
        return np.full((1, size, size), MARK, np.float32), np.zeros((1, size, size), np.float32)

    seen = []
    real = common.dihedral

    def spy(arrays, k):
        seen.append(bool(np.all(arrays[0] == MARK)))
        return real(arrays, k)

    monkeypatch.setattr(ft, "_low_dose_pair", marked)
    monkeypatch.setattr(common, "dihedral", spy)
    _, result = collect(
        ft.finetune_atoms_iter(
            [s.image for s in samples], [s.positions for s in samples], steps=steps, name="ld"
        )
    )
    return np.array(seen).reshape(steps, ft.BATCH).sum(1).tolist(), result


def test_a_lattice_fine_tune_replays_low_dose_crystals_in_every_batch(
    monkeypatch, one_torch_thread
):
    samples = [
        simulate_lattice(
            (128, 128), scene="crystal", lattice="square", spacing=9.0, dose=500, seed=s
        )
        for s in (11, 12)
    ]
    per_batch, result = _replayed_low_dose_crops(monkeypatch, samples)
    assert ft.LOW_DOSE_PER_BATCH >= 1
    assert per_batch == [ft.LOW_DOSE_PER_BATCH] * 3
    assert result.card["recipe"]["low_dose_replay_per_batch"] == ft.LOW_DOSE_PER_BATCH


def test_isolated_atoms_are_taught_without_low_dose_crystals(monkeypatch, one_torch_thread):
    samples = [
        simulate_lattice((128, 128), scene="single_atoms", dose=500, seed=s) for s in (14, 15)
    ]
    per_batch, result = _replayed_low_dose_crops(monkeypatch, samples)
    assert per_batch == [0, 0, 0]
    assert result.card["recipe"]["points_form_lattices"] is False


def test_the_low_dose_crystals_are_standard_lattices_at_5_to_50_counts(monkeypatch):
    calls = []
    real = lattice_module.simulate_lattice

    def spy(*args, **kwargs):
        sample = real(*args, **kwargs)
        calls.append(sample.params)
        return sample

    monkeypatch.setattr(lattice_module, "simulate_lattice", spy)
    pairs = [ft._low_dose_pair(5_000_500 + i, 96, "plain") for i in range(12)]
    assert len(calls) == 12
    for (x, y), params in zip(pairs, calls, strict=True):
        assert x.shape == y.shape == (1, 96, 96)
        assert params["scene"] == "crystal" and params["lattice"] in LATTICES
        assert ft.LOW_DOSES[0] <= params["dose"] <= ft.LOW_DOSES[1]
        assert y.max() > 0.9  # the columns are in the target: the crop is not empty
    # the doses spread over the range, not one value
    doses = [p["dose"] for p in calls]
    assert max(doses) / min(doses) > 3
