"""Fine-tuning keeps the base's low-dose crystals: every batch replays simulated crystals at
5-50 counts, where a model taught dim columns otherwise fires on noise between the columns
(notes/s17/B.md; the F1 figures come from benchmarks/finetune.py)."""

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


def test_every_training_batch_replays_low_dose_crystals(monkeypatch, one_torch_thread):
    samples = [
        simulate_lattice(
            (128, 128), scene="crystal", lattice="square", spacing=9.0, dose=500, seed=s
        )
        for s in (11, 12)
    ]

    def marked(seed, size, kind):
        return np.full((1, size, size), MARK, np.float32), np.zeros((1, size, size), np.float32)

    seen = []
    real = common.dihedral

    def spy(arrays, k):
        seen.append(bool(np.all(arrays[0] == MARK)))
        return real(arrays, k)

    monkeypatch.setattr(ft, "_low_dose_pair", marked)
    monkeypatch.setattr(common, "dihedral", spy)
    steps = 3
    collect(
        ft.finetune_atoms_iter(
            [s.image for s in samples], [s.positions for s in samples], steps=steps, name="ld"
        )
    )
    per_batch = np.array(seen).reshape(steps, ft.BATCH).sum(1)
    assert per_batch.tolist() == [ft.LOW_DOSE_PER_BATCH] * steps
    assert ft.LOW_DOSE_PER_BATCH >= 1


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
