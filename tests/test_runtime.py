import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_microml.runtime.device import resolve_device
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
    rec = make_provenance("atom_finder", parameters={"t": np.float32(0.5), "s": (1, 2)},
                          model={"name": "m", "sha256": "00"}, device="cpu", seed=3, input_name="img",
                          input_file=f)
    json.dumps(rec)
    assert rec["tool"] == "atom_finder" and rec["seed"] == 3 and rec["input_layer"] == "img"
    assert rec["input_sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert rec["version"]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((20, 20, 3)), "RGB"), (np.zeros((1, 1)), "only 1×1"), (np.full((20, 20), np.nan), "no valid"),
    (np.zeros((0, 20, 20)), "empty"), (np.zeros((2, 2, 20, 20)), "4 dimensions"), (np.array(["a"]), "numbers"),
])
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
    data = bytearray((registry.Path(registry.__file__).parent / "weights" / entry["file"]).read_bytes())
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
    res = subprocess.run([npe2 or "npe2", "validate", "napari-microml"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_public_api_is_lazy():
    res = subprocess.run([sys.executable, "-c", "import sys, napari_microml; print('torch' in sys.modules)"],
                         capture_output=True, text=True)
    assert res.stdout.strip() == "False"
