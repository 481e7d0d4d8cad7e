import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_microml.runtime.device import describe_device, resolve_device
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.tiling import tiled_predict
from napari_microml.runtime.validate import as_image_stack
from napari_microml.runtime.workers import drain


def test_auto_device_and_clear_errors():
    import torch

    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


def test_cpu_label_counts_threads_in_words():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert describe_device("cpu") == "cpu (1 thread)"
        torch.set_num_threads(2)
        assert describe_device("cpu") == "cpu (2 threads)"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(1, 37, 53), (2, 600, 700), (1, 512, 513), (1, 9, 300)])
def test_tiling_reassembles_exactly(shape):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    calls = []

    def double(batch):
        calls.append(batch.shape)
        assert batch.shape[-1] % 8 == 0 and batch.shape[-2] % 8 == 0
        return batch * 2

    out = drain(tiled_predict(double, image, out_channels=shape[0], tile=256, overlap=32))
    np.testing.assert_allclose(out, image * 2, rtol=1e-5, atol=1e-5)
    assert max(c[-1] for c in calls) <= 256


def test_tiling_blends_position_dependent_output():
    """A network whose output depends on the tile (a constant per call) blends smoothly."""
    image = np.zeros((1, 700, 700), np.float32)
    counter = iter(range(1000))

    def noisy(batch):
        return np.stack([np.full(b.shape, next(counter), np.float32) for b in batch])

    out = drain(tiled_predict(noisy, image, out_channels=1, tile=256, overlap=32, batch_size=1))[0]
    jumps = np.abs(np.diff(out, axis=1)).max()
    assert jumps < 1.0  # ramps, not hard seams (values differ by ≥1 between tiles)


def test_provenance_fields(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    rec = make_provenance(
        "atom_finder",
        parameters={"t": np.float32(0.5), "s": (1, 2)},
        model={"name": "m", "sha256": "00"},
        device="cpu",
        seed=3,
        input_name="img",
        input_file=f,
    )
    json.dumps(rec)
    assert rec["tool"] == "atom_finder" and rec["seed"] == 3 and rec["input_layer"] == "img"
    assert rec["input_sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert rec["version"]


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((20, 20, 3)), "RGB"),
        (np.zeros((1, 1)), "only 1×1"),
        (np.full((20, 20), np.nan), "no valid"),
        (np.zeros((0, 20, 20)), "empty"),
        (np.zeros((2, 2, 20, 20)), "4 dimensions"),
        (np.array(["a"]), "numbers"),
    ],
)
def test_bad_images_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        as_image_stack(bad)


def test_registry_rejects_tampered_weights(tmp_path, monkeypatch):
    from napari_microml.nets import registry

    entries = registry.list_models("atoms")
    assert entries, "the package must ship atom-finder weights"
    name, entry = next(iter(entries.items()))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    shutil.copy(registry.MANIFEST, tmp_path / "manifest.json")
    monkeypatch.setattr(registry, "MANIFEST", tmp_path / "manifest.json")
    data = bytearray(
        (registry.Path(registry.__file__).parent / "weights" / entry["file"]).read_bytes()
    )
    data[-10] ^= 0xFF
    (tmp_path / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(registry.ModelIntegrityError, match="sha256"):
        registry.load_model("atoms", name)


def test_unknown_model_is_a_clear_error():
    from napari_microml.nets.registry import load_model

    with pytest.raises(ValueError, match="No atoms model named"):
        load_model("atoms", "nonexistent")


def test_npe2_manifest_validates():
    npe2 = shutil.which("npe2", path=str(__import__("pathlib").Path(sys.executable).parent))
    res = subprocess.run(
        [npe2 or "npe2", "validate", "napari-microml"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_public_api_is_lazy():
    res = subprocess.run(
        [sys.executable, "-c", "import sys, napari_microml; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert res.stdout.strip() == "False"


# --- the input contract (issue #27): one validation module, no absolute floors --------------------
def test_normalisation_does_not_depend_on_units():
    from napari_microml.runtime.validate import robust_normalize

    img = np.random.default_rng(0).random((32, 32))
    ref = robust_normalize(img)
    for scaled in (img * 1e-12, img * 1e-30, img * 1e12, img + 1e3):
        np.testing.assert_allclose(robust_normalize(scaled), ref, atol=1e-4)
    sparse = np.zeros((32, 32))
    sparse[3, 4] = 1e-14  # percentiles coincide: the full range is used, not a fixed floor
    assert robust_normalize(sparse).max() == pytest.approx(1.0)


def test_float64_images_keep_precision_and_range():
    from napari_microml.runtime.validate import as_scaled_stack

    img = np.random.default_rng(1).random((16, 16))
    stack, _ = as_image_stack(img * 1e300)
    assert stack.dtype == np.float64 and np.isfinite(stack).all()
    fine = 1e3 + img * 1e-6  # float32 would keep ~1/16 of a step of this detail
    s = as_scaled_stack(fine)
    np.testing.assert_allclose(s.stack[0], (img - img.min()) / np.ptp(img), atol=1e-5)


def test_true_false_images_are_refused():
    with pytest.raises(ValueError, match="True/False"):
        as_image_stack(np.ones((20, 20), bool))


@pytest.mark.parametrize(
    "value, kwargs, error, words",
    [
        ("0.5", {}, TypeError, "threshold must be a number, not the text '0.5'"),
        (True, {}, TypeError, "must be a number, not True"),
        (None, {}, TypeError, "must be a number"),
        (float("nan"), {}, ValueError, "must be a finite number"),
        (1e309, {}, ValueError, "must be a finite number"),
        (1.5, {"integer": True}, ValueError, "must be a whole number"),
        (0, {"low": 1}, ValueError, "must be at least 1"),
        (0, {"low": 0, "low_open": True}, ValueError, "must be greater than 0"),
        (2, {"low": 0, "high": 1}, ValueError, "must be between 0 and 1"),
    ],
)
def test_numbers_are_checked_with_a_sentence(value, kwargs, error, words):
    from napari_microml.runtime.validate import check_number

    with pytest.raises(error, match=words):
        check_number(value, "threshold", **kwargs)


def test_numbers_pass_through_as_numbers():
    from napari_microml.runtime.validate import check_number

    assert check_number(np.int64(3), "n", low=1, integer=True) == 3
    assert isinstance(check_number(4.0, "n", integer=True), int)
    assert check_number(np.array(0.25), "t", low=0, high=1) == 0.25
    assert check_number(None, "t", none_ok=True) is None


@pytest.mark.parametrize(
    "positions, kwargs, words",
    [
        ([[-50, -50]], {}, "outside the 20×30 px image"),
        ([[10, 30.6]], {}, "outside"),
        (np.full((4, 3), 5.0), {"frame_column": False}, r"\(N, 2\) array"),
        (np.full((4, 3), 5.0), {}, "frame indices run 5…5"),
        (np.arange(6.0), {}, r"\(N, 2\)"),
        ([[1, np.nan]], {}, "NaN"),
        ([[0.5, 1, 1]], {}, "whole frame numbers"),
        ([[1, 1]], {"is_stack": True, "n_frames": 2}, "frame column"),
    ],
)
def test_positions_are_checked_against_the_image(positions, kwargs, words):
    from napari_microml.runtime.validate import check_positions

    with pytest.raises(ValueError, match=words):
        check_positions(positions, (20, 30), **kwargs)


def test_positions_on_the_image_are_kept():
    from napari_microml.runtime.validate import check_positions

    pos, frames = check_positions([[-0.5, 29.5], [19.5, 0]], (20, 30))
    np.testing.assert_array_equal(pos, [[-0.5, 29.5], [19.5, 0]])
    pos, frames = check_positions([[1, 2, 3]], (2, 20, 30), n_frames=2, is_stack=True)
    assert frames.tolist() == [1] and pos.tolist() == [[2, 3]]
    assert check_positions(np.zeros((0, 2)), (20, 30))[0].shape == (0, 2)


# --- weights: by path (unverified, hashed) and every broken install -------------------------------
def _shipped_atoms():
    from napari_microml.nets import registry

    name, entry = next(
        iter((k, v) for k, v in registry.read_manifest().items() if v["task"] == "atoms")
    )
    return registry, name, registry.WEIGHTS_DIR / entry["file"]


def test_weights_by_path_are_hashed_and_marked_unverified(tmp_path):
    from napari_microml.runtime.provenance import file_sha256

    registry, _, shipped = _shipped_atoms()
    own = tmp_path / "my_atoms.pt"
    shutil.copy(shipped, own)
    _, info = registry.load_model("atoms", str(own))
    assert info["sha256"] == file_sha256(own)
    assert info["verified"] is False and "unverified" in info["note"]
    assert registry.model_provenance(info)["note"] == info["note"]


def _broken(tmp_path, monkeypatch, registry, manifest: str | None):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(registry, "MANIFEST", tmp_path / "manifest.json")
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(manifest)


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing manifest", "model list .* is missing"),
        ("corrupt manifest", "model list .* is damaged"),
        ("manifest not a table", "model list .* is damaged"),
        ("missing weights", "weights file .* is missing"),
        ("truncated weights", "damaged or was replaced"),
    ],
)
def test_broken_install_gives_one_clear_sentence(tmp_path, monkeypatch, case, words):
    registry, name, shipped = _shipped_atoms()
    text = registry.MANIFEST.read_text()
    manifest = {
        "missing manifest": None,
        "corrupt manifest": text[: len(text) // 2],
        "manifest not a table": "[1, 2]",
    }.get(case, text)
    _broken(tmp_path, monkeypatch, registry, manifest)
    if case == "truncated weights":
        data = shipped.read_bytes()
        (tmp_path / shipped.name).write_bytes(data[: len(data) // 3])
    with pytest.raises(registry.ModelIntegrityError, match=words) as err:
        registry.load_model("atoms", name)
    assert "reinstall" in str(err.value).lower() and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_a_bad_weights_file_by_path_is_a_clear_error(tmp_path, content):
    registry, _, shipped = _shipped_atoms()
    bad = tmp_path / "bad.pt"
    if content is None:  # truncated
        data = shipped.read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="not a complete napari-microml weights file"):
        registry.load_model("atoms", str(bad))
