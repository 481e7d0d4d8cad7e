"""Named models shipped inside the package, checked by sha256 before they are used.

``weights/manifest.json`` (written by ``napari_microml.training``) lists every shipped file
with its architecture, task and sha256. Nothing is ever downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from napari_microml.runtime.provenance import file_sha256

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


class ModelIntegrityError(RuntimeError):
    """A weights file does not match the sha256 recorded when it was trained."""


def read_manifest() -> dict:
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text())


def list_models(task: str | None = None) -> dict:
    """``{name: entry}`` for shipped models, then the user's own fine-tuned ones
    (:mod:`nets.user_models`), optionally only one task's."""
    from napari_microml.nets.user_models import list_user_models

    shipped = {k: v for k, v in read_manifest().items() if task is None or v.get("task") == task}
    return {**shipped, **{k: v for k, v in list_user_models(task).items() if k not in shipped}}


def resolve_name(task: str, model: str) -> str:
    """``'default'`` → ``'atoms-default'``; full names and paths pass through."""
    if model.endswith(".pt") or model in list_models():
        return model
    return f"{task}-{model}"


def _build(arch: dict):
    from napari_microml.nets.unet import UNet

    arch = dict(arch)
    kind = arch.pop("kind", "unet")
    if kind != "unet":
        raise ValueError(f"Unknown architecture kind {kind!r} in weights file.")
    return UNet(**arch)


def load_model(task: str, model="default", device="cpu"):
    """Load a model for ``task`` and return ``(module, info)``.

    ``model`` is a shipped name (``'default'``), a path to a ``.pt`` file written by
    :func:`save_model`, or an ``nn.Module`` (used as is; handy for tests and notebooks).
    ``info`` has ``name``, ``file`` and ``sha256`` for provenance.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        return model.to(device).eval(), {"name": type(model).__name__, "file": None, "sha256": None}
    name = resolve_name(task, str(model))
    manifest = list_models()
    if name.endswith(".pt"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"Model file {path} does not exist.")
        expected = None
    elif name in manifest:
        entry = manifest[name]
        if entry.get("task") != task:
            raise ValueError(f"Model {name!r} is a {entry.get('task')} model, not a {task} model.")
        path = Path(entry["path"]) if entry.get("user") else WEIGHTS_DIR / entry["file"]
        expected = entry["sha256"]
    else:
        known = ", ".join(sorted(list_models(task))) or "none"
        raise ValueError(f"No {task} model named {model!r}. Available {task} models: {known}.")
    digest = file_sha256(path)
    if expected is not None and digest != expected:
        raise ModelIntegrityError(
            f"Weights file {path.name} is damaged or was replaced: sha256 {digest[:12]}… does "
            f"not match the recorded {expected[:12]}…. "
            + ("Fine-tune it again or delete it." if manifest.get(name, {}).get("user")
               else "Reinstall napari-microml.")
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = _build(blob["arch"])
    net.load_state_dict(blob["state_dict"])
    info = {"name": name, "file": path.name, "sha256": digest, "meta": blob.get("meta", {})}
    return net.to(device).eval(), info


def save_model(net, name: str, *, task: str, arch: dict, meta: dict | None = None) -> dict:
    """Write ``weights/<name>.pt`` and record its sha256 in the manifest (training only)."""
    import torch

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    path = WEIGHTS_DIR / f"{name}.pt"
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"arch": dict(arch), "state_dict": state, "meta": meta or {}}, path)
    import fcntl

    with open(WEIGHTS_DIR / ".manifest.lock", "w") as lock:  # several trainings may finish at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest()
        manifest[name] = {"file": path.name, "task": task, "arch": dict(arch),
                          "sha256": file_sha256(path), "meta": meta or {}}
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest[name]
