"""benchmarks/finetune_ceiling.py runs the shipped fine-tuning recipe past its stop to score every
checkpoint; its diagnosis holds only if the run it records is the shipped run (same networks up
to the stop) and its replay of the shipped choice picks what the shipped recipe picks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from napari_microml.atoms import finetune as ft
from napari_microml.runtime.workers import drain
from napari_microml.synth.lattice import simulate_lattice

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "finetune_ceiling.py"


@pytest.fixture
def ceiling(monkeypatch, user_models_folder, one_torch_thread):
    """The benchmark module, with a recipe small enough for a test (every 2 steps a check)."""
    small = {"EVAL_EVERY": 2, "PATIENCE": 3, "MIN_EVALS": 2, "N_REPLAY": 2, "LR": 1e-4}
    for key, value in small.items():
        monkeypatch.setattr(ft, key, value)
    spec = importlib.util.spec_from_file_location("finetune_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _samples():
    return [simulate_lattice((128, 128), scene="single_atoms", dose=20, seed=s) for s in (23, 24)]


def test_the_recorded_run_is_the_shipped_run_and_the_replay_picks_its_checkpoint(ceiling):
    samples = _samples()
    images, points = [s.image for s in samples], [s.positions for s in samples]
    shipped = drain(ft.finetune_atoms_iter(images, points, steps=30, seed=1, name="shipped"))
    result, passes, _ = ceiling._run(images, points, seed=1, holdout="strip", max_steps=30)
    choice = ceiling._shipped_choice(passes)

    assert shipped.card["steps"] < 30  # the shipped run stopped early ...
    assert [p[0] for p in passes] == list(range(0, 31, 2))  # ... the recorded one ran on
    assert choice["stopped"] == shipped.card["steps"]
    assert choice["kept_base"] == shipped.kept_base
    assert choice["best_step"] == (0 if shipped.kept_base else shipped.card["best_step"])
    if not shipped.kept_base:
        assert choice["threshold"] == shipped.card["validation"]["threshold"]
    # the same networks up to the shipped stop: validation draws no random numbers
    recorded = dict((step, state) for step, _, state in passes)
    assert shipped.tuned_state is not None and choice["loss_best_step"] == shipped.card["best_step"]
    best = recorded[shipped.card["best_step"]]
    assert all(torch.equal(best[k], v) for k, v in shipped.tuned_state.items())
    assert result.card["steps"] == 30


def test_without_a_strip_every_point_trains(ceiling, monkeypatch):
    samples = _samples()
    seen = []
    real = ft._crop

    def spy(item, size, rng):
        seen.append((item.lo, item.hi, item.train))
        return real(item, size, rng)

    monkeypatch.setattr(ft, "_crop", spy)
    images, points = [s.image for s in samples], [s.positions for s in samples]
    ceiling._run(images, points, seed=1, holdout="none", max_steps=2)
    assert seen and all(lo == hi == 0 and train[0] == 0 for lo, hi, train in seen)
    assert ft._crop is spy  # restored after the run
