"""Fine-tuning the atom finder on a user's points: mechanics with tiny step counts (the F1 gains
are measured by benchmarks/finetune.py)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import napari_microml as mm
from napari_microml.atoms import finetune as ft
from napari_microml.atoms.finder import input_kind
from napari_microml.nets import user_models
from napari_microml.nets.registry import ModelIntegrityError, list_models, load_model
from napari_microml.runtime.workers import collect
from napari_microml.synth.lattice import simulate_lattice


@pytest.fixture(autouse=True)
def models_folder(tmp_path, monkeypatch):
    """Never the real per-user folder."""
    folder = tmp_path / "models"
    monkeypatch.setenv(user_models.ENV, str(folder))
    return folder


REAL_GUARD = ft._Guard.__call__


@pytest.fixture(autouse=True)
def quiet_guard(monkeypatch):
    """The crystal guard passes every blend unless a test says otherwise (its own tests below)."""
    monkeypatch.setattr(ft, "GUARD_FRAMES", 1)
    monkeypatch.setattr(ft, "GUARD_SIZE", 96)
    monkeypatch.setattr(ft._Guard, "__call__", lambda self, net, threshold: 0.99)


def _guard_scores(*values):
    """A stand-in guard returning these F1s in turn: the base first, then each blend."""
    calls = []

    def fake(self, net, threshold):
        calls.append(threshold)
        return values[min(len(calls) - 1, len(values) - 1)]

    return fake


@pytest.fixture(scope="module")
def frames():
    samples = [
        simulate_lattice(
            (128, 128), scene="crystal", lattice="square", spacing=9.0, dose=500, seed=s
        )
        for s in (11, 12)
    ]
    return [s.image for s in samples], [s.positions for s in samples]


def _scores(*values):
    """A stand-in validator returning these F1s in turn (the last one repeats)."""
    calls = []

    def fake(self, net):
        f1 = values[min(len(calls), len(values) - 1)]
        calls.append(f1)
        return {
            "f1": f1,
            "threshold": 0.4,
            "loss": 1.0 - f1,
            "ap": f1,
            "f1_by_threshold": [f1] * len(ft.THRESHOLDS),
            "tp": [5] * len(ft.THRESHOLDS),
            "n_pred": [10] * len(ft.THRESHOLDS),
            "n_points": 10,
        }

    return fake


def test_models_folder_follows_the_environment(models_folder):
    assert user_models.models_dir() == models_folder
    assert user_models.list_user_models() == {}


def test_a_better_model_is_saved_listed_loadable_and_deletable(
    frames, models_folder, monkeypatch, one_torch_thread
):
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.8))
    images, points = frames
    name = mm.finetune_atoms(images, points, steps=2, name="my-square")
    assert name == "my-square"
    card = json.loads((models_folder / "atoms-my-square.json").read_text())
    weights = models_folder / "atoms-my-square.pt"
    assert card["sha256"] == user_models.file_sha256(weights)
    assert card["base"] == "atoms-default" and card["n_points"] == sum(len(p) for p in points)
    assert card["validation"]["f1_before"] == 0.5 and card["validation"]["f1_after"] == 0.8
    assert [im["n_points"] for im in card["images"]] == [len(p) for p in points]
    assert (models_folder / "atoms-my-square.md").read_text().startswith("# atoms-my-square")
    assert "atoms-my-square" in list_models("atoms") and "atoms-my-square" in mm.list_models()
    net, info = load_model("atoms", name)
    assert info["sha256"] == card["sha256"] and info["meta"]["recommended_threshold"] == 0.4
    result = mm.find_atoms(images[0], model=name)
    assert result.model["name"] == "atoms-my-square" and result.model["sha256"] == card["sha256"]
    with pytest.raises(ValueError, match="already exists"):
        mm.finetune_atoms(images, points, steps=1, name="my-square")
    user_models.delete_user_model(name)
    assert "atoms-my-square" not in list_models("atoms")
    assert not any(models_folder.iterdir())


def test_the_base_batchnorm_statistics_are_kept(frames, monkeypatch, one_torch_thread):
    """Only the weights learn; BatchNorm's running statistics stay the base's (forgetting)."""
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.8))
    name = mm.finetune_atoms(*frames, steps=3, name="bn-kept")
    base, _ = load_model("atoms", "default")
    tuned, _ = load_model("atoms", name)
    b, t = base.state_dict(), tuned.state_dict()
    stats = [k for k in b if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(b[k], t[k]) for k in stats)
    weights = [k for k in b if k.endswith("weight")]
    assert any(not torch.equal(b[k], t[k]) for k in weights)


def test_a_damaged_user_model_is_refused(frames, monkeypatch, one_torch_thread):
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.8))
    name = mm.finetune_atoms(*frames, steps=1, name="damaged")
    path = user_models.list_user_models()["atoms-damaged"]["path"]
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ModelIntegrityError, match="Fine-tune it again"):
        load_model("atoms", name)


def test_a_worse_model_is_never_handed_over(frames, models_folder, monkeypatch, one_torch_thread):
    """A wrecked network (huge learning rate) scores below the base on the held-out strips."""
    monkeypatch.setattr(ft, "LR", 1.0)
    images, points = frames
    messages, result = collect(ft.finetune_atoms_iter(images, points, steps=3, name="wrecked"))
    assert result.kept_base and result.name == "default"
    assert result.card["validation"]["f1_after"] <= result.card["validation"]["f1_before"]
    assert "Kept the base model" in result.reason
    assert not models_folder.exists() or not any(models_folder.iterdir())
    with pytest.warns(UserWarning, match="Kept the base model"):
        assert mm.finetune_atoms(images, points, steps=3, name="wrecked") == "default"
    losses = [m for m in messages if m[0] == "loss"]
    assert losses[0][1] == 0 and losses[-1][1] == 3 and losses[-1][3]["loss"] > 0


def test_stop_leaves_no_model(frames, models_folder, one_torch_thread):
    gen = ft.finetune_atoms_iter(*frames, steps=50, name="stopped")
    for message in gen:
        if message[0] == "progress" and message[1] == 3:
            break
    gen.close()  # what the widget's Stop does: the worker quits at the next yield
    assert "atoms-stopped" not in list_models("atoms")
    assert not models_folder.exists() or not any(models_folder.iterdir())


def test_a_failed_write_leaves_no_file(tmp_path):
    def fail(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        user_models._atomic_write(tmp_path / "x.pt", fail)
    assert list(tmp_path.iterdir()) == []


def test_training_crops_stay_out_of_the_validation_strip(rng):
    x = np.zeros((128, 200), np.float32)
    points = np.column_stack([rng.uniform(0, 128, 40), rng.uniform(0, 200, 40)])
    strips = set()
    for seed in range(4):
        _, item = ft._prepare(
            x + rng.normal(size=x.shape).astype(np.float32), points, "plain", 0.2, seed, 64
        )
        assert item.hi - item.lo == round(0.2 * x.shape[item.axis])
        assert item.lo == 0 or item.hi == x.shape[item.axis]
        strips.add((item.axis, item.lo))
        marked = item.x.copy()
        sl = [slice(None), slice(None)]
        sl[item.axis] = slice(item.lo, item.hi)
        marked[tuple(sl)] = 1e6  # the strip, made recognisable
        item.x = marked
        for _ in range(200):
            crop, target = ft._crop(item, 64, rng)
            assert crop.shape == (1, 64, 64) and target.shape == (1, 64, 64)
            assert crop.max() < 1e6
    # atoms only in the top half: the strip is where some of them are
    _, item = ft._prepare(x, points[points[:, 0] < 60], "plain", 0.2, 0, 64)
    assert item.in_strip(item.points).any()


def test_bad_input_is_explained(frames):
    images, points = frames
    with pytest.raises(ValueError, match="one array of points per image"):
        mm.finetune_atoms(images, points[:1])
    with pytest.raises(ValueError, match="2D grey images"):
        mm.finetune_atoms([np.zeros((2, 64, 64))], [points[0]])
    with pytest.raises(ValueError, match="outside"):
        mm.finetune_atoms([images[0]], [points[0] + 500])
    with pytest.raises(ValueError, match="at least 5"):
        mm.finetune_atoms([images[0]], [points[0][:2]])
    with pytest.raises(ValueError, match="between 0 and 0.5"):
        mm.finetune_atoms(images, points, validation=0.8)
    with pytest.raises(ValueError, match="shipped"):
        mm.finetune_atoms(images, points, name="default")
    with pytest.raises(ValueError, match="letters, digits"):
        mm.finetune_atoms(images, points, name="../evil")
    with pytest.raises(ValueError, match="too small"):
        mm.finetune_atoms([np.zeros((40, 40))], [np.full((6, 2), 20.0)])
    with pytest.raises(TypeError, match="list of 2D arrays"):
        mm.finetune_atoms("image.tif", points)


def test_edits_are_counted():
    before = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 10.0], [30.0, 30.0]])
    after = np.vstack([before[:3], [[50.0, 50.0], [60.0, 60.0]]])
    after[1] += [0.0, 1.5]  # moved
    after[2] += [0.2, 0.0]  # a nudge below moved_px
    assert ft.count_edits(before, after) == {"added": 2, "removed": 1, "moved": 1}
    assert ft.count_edits(before, before) == {"added": 0, "removed": 0, "moved": 0}


def test_review_puts_doubtful_points_first():
    import pandas as pd

    grid = np.array([[r, c] for r in range(10, 100, 10) for c in range(10, 100, 10)], float)
    pos = np.vstack([grid, [[52.0, 50.0]]])  # a crowded extra peak beside (50, 50)
    features = pd.DataFrame(
        {"score": np.full(len(pos), 0.95), "position_std": np.full(len(pos), 0.1)}
    )
    features.loc[5, "score"] = 0.52  # just above the threshold
    features.loc[7, "position_std"] = 2.0
    order, words = ft.review_order(pos, features=features, threshold=0.5)
    assert set(order[:4]) == {5, 7, len(pos) - 1, 40}  # 40 is (50, 50), crowded by the extra peak
    assert "near the threshold" in words[5] and "uncertain by 2.0 px" in words[7]
    assert "nearest neighbour" in words[len(pos) - 1]
    assert words[0] == "looks certain"
    assert sorted(order) == list(range(len(pos)))


def test_unsure_detections_are_reported(frames, monkeypatch, one_torch_thread):
    from types import SimpleNamespace

    import pandas as pd

    def result(scores, model="atoms-default"):
        return SimpleNamespace(features=pd.DataFrame({"score": scores}), model={"name": model})

    assert ft.unsure_note(result(np.full(40, 0.95))) == ""
    unsure = np.r_[np.full(20, 0.95), np.full(20, 0.55)]
    assert "50% of the detections are unsure" in ft.unsure_note(result(unsure))
    assert ft.unsure_note(result([0.5, 0.5])) == ""  # too few to say
    # the user's own model: its scores were calibrated on the user's images
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.8))
    name = mm.finetune_atoms(*frames, steps=1, name="mine")
    assert ft.unsure_note(result(unsure, f"atoms-{name}")) == ""
    # a real run: sure on a clean simulated lattice
    assert ft.unsure_note(mm.find_atoms(frames[0][0])) == ""


def test_dark_columns_are_taught_as_the_finder_sees_them(frames):
    """ABF/BF: the network sees inverted frames in find_atoms, so it must learn on them too."""
    image, points = frames[0][0], frames[1][0]
    _, bright = ft._prepare(image, points, "plain", 0.2, 0, 64, "bright")
    for contrast in ("dark", "auto"):
        _, dark = ft._prepare(image.max() - image, points, "plain", 0.2, 0, 64, contrast)
        np.testing.assert_allclose(dark.x, bright.x, atol=1e-4)


def test_blends_reproduce_the_base_at_0_and_the_fine_tuned_model_at_1():
    base, _ = load_model("atoms", "default")
    b = base.state_dict()
    gen = torch.Generator().manual_seed(0)
    t = {
        k: v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 1
        for k, v in b.items()
    }
    zero, one = ft.blend_weights(b, t, alpha=0.0), ft.blend_weights(b, t, alpha=1.0)
    assert all(torch.equal(zero[k], b[k]) for k in b if b[k].is_floating_point())
    assert all(torch.equal(one[k], t[k]) for k in b)
    half = ft.blend_weights(b, t, alpha=0.5)
    key = next(k for k in b if k.endswith("weight"))
    torch.testing.assert_close(half[key], (b[key] + t[key]) / 2)
    with pytest.raises(ValueError, match="0-1"):
        ft.blend_weights(b, t, alpha=1.5)
    with pytest.raises(ValueError, match="not one network"):
        ft.blend_weights(b, {k: v for k, v in list(t.items())[1:]}, alpha=0.5)


def test_the_saved_model_is_the_chosen_blend(frames, models_folder, monkeypatch, one_torch_thread):
    """Held-out F1 rises with alpha, but the guard stops blends above 0.5: 0.5 is saved."""
    monkeypatch.setattr(ft, "ALPHAS", (0.25, 0.5, 0.75, 1.0))
    monkeypatch.setattr(ft, "GUARD_LOSS", 0.003)
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.7, 0.6, 0.7, 0.8, 0.9))
    # the base 0.990 on the crystals, then alpha 0.25, 0.5 (loss 0.002: allowed), 0.75, 1
    monkeypatch.setattr(ft._Guard, "__call__", _guard_scores(0.990, 0.990, 0.988, 0.980, 0.97))
    result = collect(ft.finetune_atoms_iter(*frames, steps=2, name="blend"))[1]
    assert not result.kept_base and result.name == "blend"
    blend = result.card["blend"]
    assert blend["alpha"] == 0.5 and blend["guard"]["base_f1"] == 0.99
    assert [b["guard_ok"] for b in blend["grid"]] == [True, True, False, False]
    assert result.card["validation"]["f1_after"] == 0.7
    saved, info = load_model("atoms", "blend")
    assert info["meta"]["blend_alpha"] == 0.5
    base, _ = load_model("atoms", "default")
    expected = ft.blend_weights(base.state_dict(), result.tuned_state, alpha=0.5)
    got = saved.state_dict()
    assert all(torch.allclose(got[k].float(), expected[k].float()) for k in expected)
    assert not all(torch.equal(got[k], result.tuned_state[k]) for k in expected)


def test_by_default_the_fine_tuned_weights_are_saved_unblended(
    frames, models_folder, monkeypatch, one_torch_thread
):
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.8))
    monkeypatch.setattr(ft._Guard, "__call__", _guard_scores(0.99, 0.0))  # would veto if used
    result = collect(ft.finetune_atoms_iter(*frames, steps=2, name="plain"))[1]
    assert not result.kept_base and result.card["blend"]["alpha"] == 1.0
    assert [set(b) for b in result.card["blend"]["grid"]] == [{"alpha", "f1", "threshold"}]
    saved = load_model("atoms", "plain")[0].state_dict()
    assert all(torch.equal(saved[k], result.tuned_state[k]) for k in saved)
    assert "fine-tuned and" not in result.reason


def test_a_model_that_forgets_crystals_is_not_handed_over(
    frames, models_folder, monkeypatch, one_torch_thread
):
    monkeypatch.setattr(ft, "GUARD_LOSS", 0.003)
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.8))
    monkeypatch.setattr(ft._Guard, "__call__", _guard_scores(0.99, 0.95))
    result = collect(ft.finetune_atoms_iter(*frames, steps=2, name="forgets"))[1]
    assert result.kept_base and result.name == "default"
    assert "low-dose crystals worse" in result.reason and "0.950 vs 0.990" in result.reason
    assert not models_folder.exists() or not any(models_folder.iterdir())


def test_the_guard_scores_what_a_network_finds(monkeypatch, one_torch_thread):
    """The real guard on small frames: the base matches itself; a silenced network finds none."""
    monkeypatch.setattr(ft._Guard, "__call__", REAL_GUARD)
    monkeypatch.setattr(ft, "GUARD_FRAMES", 2)
    monkeypatch.setattr(ft, "GUARD_SIZE", 128)
    net, info = load_model("atoms", "default")
    guard = ft._Guard(input_kind(net, info), torch.device("cpu"), 0)
    assert len(guard.frames) == 2 and all(len(p) > 20 for _, p, _, _ in guard.frames)
    assert guard(net, 0.5) > 0.9
    assert guard(net, 0.5) == guard(copy.deepcopy(net), 0.5)
    with torch.no_grad():
        net.head.bias.fill_(-20.0)  # probability ~0 everywhere
    assert guard(net, 0.5) == 0.0


def test_a_model_worse_than_the_one_in_use_is_not_handed_over(
    frames, models_folder, monkeypatch, one_torch_thread
):
    """Started from 'default' while the user ran pt-single-atoms: beating the start is not
    enough (validator calls: the base, the model in use, step 2, the blend)."""
    images, points = frames
    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.85, 0.8))
    _, result = collect(ft.finetune_atoms_iter(images, points, steps=2, in_use="pt-single-atoms"))
    assert result.kept_base and result.name == "pt-single-atoms"
    assert result.reason.startswith("Kept 'pt-single-atoms', the model you were using")
    assert "reached F1 0.800 (default 0.500), not above pt-single-atoms's 0.850" in result.reason
    assert not models_folder.exists() or not any(models_folder.iterdir())

    monkeypatch.setattr(ft._Validator, "__call__", _scores(0.5, 0.7, 0.8))
    _, result = collect(ft.finetune_atoms_iter(images, points, steps=2, in_use="pt-single-atoms"))
    assert not result.kept_base
    assert "0.500 (default) → 0.800" in result.reason and "; pt-single-atoms 0.700" in result.reason
    validation = result.card["validation"]
    assert validation["in_use"] == "atoms-pt-single-atoms" and validation["f1_in_use"] == 0.7


def test_average_precision_of_ranked_detections():
    """Precision 1, 1/2, 2/3 down the ranking, made non-increasing: (1 + 2/3) / 3 points."""
    ap = ft.average_precision([0.7, 0.9, 0.8], [True, True, False], n_true=3)
    assert ap == pytest.approx((1 + 2 / 3) / 3)
    assert ft.average_precision([0.9, 0.8], [True, True], n_true=2) == 1.0
    assert ft.average_precision([0.9], [False], n_true=2) == 0.0
    assert ft.average_precision([], [], n_true=0) == 0.0


class _Fixed(torch.nn.Module):
    """A stand-in network: logits = gain · input + offset (the input is a map of the points)."""

    def __init__(self, gain, offset):
        super().__init__()
        self.gain, self.offset = gain, offset

    def forward(self, x):
        return self.gain * x + self.offset


def _strip_item():
    """A 64×64 image whose top 32 rows are the held-out strip, 6 points in it, 2 below."""
    from napari_microml.synth.render import heatmap

    points = np.array([[8, 10], [8, 30], [8, 50], [22, 12], [22, 33], [22, 52], [45, 20], [50, 40]])
    target = heatmap((64, 64), points.astype(float), ft.USER_SIGMA)
    return ft._Item(target.copy(), target, points.astype(float), 0, 0, 32, (32, 0))


def test_the_checkpoint_score_prefers_the_model_that_finds_the_points(one_torch_thread):
    """An under-confident network (no peak reaches the lowest threshold) has the lower held-out
    heat-map loss than one that finds every point on a grey background; average precision
    ranks them the right way, and the selector keeps the finding one."""
    validate = ft._Validator([_strip_item()], 2.0, torch.device("cpu"))
    timid, finder = validate(_Fixed(2.0, -5.0)), validate(_Fixed(12.0, 0.0))
    assert timid["loss"] < finder["loss"]  # what the loss-chosen checkpoint would keep
    assert finder["ap"] == 1.0 and timid["ap"] == 0.0
    assert max(finder["f1_by_threshold"]) == 1.0 and max(timid["f1_by_threshold"]) == 0.0

    def chosen(by):
        base = {**timid, "ap": 0.0, "loss": 1.0, "f1": 0.0}
        sel = ft._Selector(by, base)
        for step, val in ((25, timid), (50, finder)):
            sel.update(val, step, _Fixed(0.0, 0.0), n_evals=step // 25 + 1)
        return sel.best["step"]

    assert chosen("ap") == 50
    assert chosen("loss") == 25
    with pytest.raises(ValueError, match="chosen by one of"):
        ft._Selector("f1", timid)


def test_the_saved_checkpoint_is_the_one_with_the_best_held_out_ap(
    frames, models_folder, monkeypatch, one_torch_thread
):
    """Loss lowest at step 1, AP highest at step 3 (a tie at step 4 goes to the later step);
    the saved model is step 4's, and the loss's choice is reported beside it when compared."""
    rows = iter(
        [  # base, steps 1-4, then the final check of the chosen weights
            {"loss": 0.9, "ap": 0.2, "f1": 0.3},
            {"loss": 0.1, "ap": 0.3, "f1": 0.4},
            {"loss": 0.5, "ap": 0.5, "f1": 0.5},
            {"loss": 0.6, "ap": 0.8, "f1": 0.7},
            {"loss": 0.7, "ap": 0.8, "f1": 0.75},
            {"loss": 0.7, "ap": 0.8, "f1": 0.75},
        ]
    )

    def fake(self, net):
        row = next(rows)
        return {
            **row,
            "threshold": 0.4,
            "f1_by_threshold": [row["f1"]] * len(ft.THRESHOLDS),
            "tp": [5] * len(ft.THRESHOLDS),
            "n_pred": [10] * len(ft.THRESHOLDS),
            "n_points": 10,
        }

    monkeypatch.setattr(ft._Validator, "__call__", fake)
    monkeypatch.setattr(ft, "EVAL_EVERY", 1)
    monkeypatch.setattr(ft, "SELECT_BY", "ap")
    monkeypatch.setattr(ft, "COMPARE_BY", ("loss",))
    result = collect(ft.finetune_atoms_iter(*frames, steps=4, name="by-ap"))[1]
    assert not result.kept_base and result.card["best_step"] == 4
    assert result.card["selected_by"] == "ap" and result.card["validation"]["f1_after"] == 0.75
    assert result.compared["loss"]["step"] == 1 and result.compared["loss"]["f1"] == 0.4
    assert [h["val_ap"] for h in result.history] == [0.2, 0.3, 0.5, 0.8, 0.8]


def test_an_spm_scan_is_levelled_for_training_as_the_finder_levels_it(frames):
    """Teach trained on the raw topograph while the finder ran on the levelled one: the network
    learnt frames it would never see. Both now read the same prepared frame."""
    from napari_microml.runtime.level import prepare_frame
    from napari_microml.runtime.validate import as_scaled_stack
    from napari_microml.synth.scanprobe import scanning_probe

    image, points = frames[0][0], frames[1][0]
    stm = scanning_probe(image, plane=0, lines=0, shear=0, noise=0.3, seed=1)
    levelled = as_scaled_stack(stm, what="image").stack[0]
    prepare_frame(levelled, scan="spm")
    _, x_spm, _ = ft._on_grid(stm, points, "plain", "auto", "spm")
    _, x_want, _ = ft._on_grid(levelled, points, "plain", "auto")
    np.testing.assert_allclose(x_spm, x_want, atol=1e-6)
    assert not np.allclose(ft._on_grid(stm, points, "plain", "auto")[1], x_want, atol=1e-3)
    assert ft._as_the_finder_reads(image, "auto") is image  # an electron frame: its own numbers


def test_teach_records_the_scan_kinds_and_checks_them(frames, one_torch_thread):
    images, points = frames
    messages, result = collect(
        ft.finetune_atoms_iter(images, points, steps=1, name="spm-tuned", scan=["spm", "auto"])
    )
    assert result.card["provenance"]["parameters"]["scan"] == ["spm", "auto"]
    with pytest.raises(ValueError, match="one each"):
        collect(ft.finetune_atoms_iter(images, points, steps=1, scan=["spm"]))
    with pytest.raises(ValueError, match="scan must be"):
        collect(ft.finetune_atoms_iter(images, points, steps=1, scan="stm"))
