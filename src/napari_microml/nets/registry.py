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
    """Read the shipped models' manifest; ``{}`` when there is none (training writes the first)."""
    if not MANIFEST.exists():
        return {}
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelIntegrityError(
            f"The model list {MANIFEST} is damaged ({err}); reinstall napari-microml."
        ) from None
    if not isinstance(manifest, dict):
        raise ModelIntegrityError(
            f"The model list {MANIFEST} is damaged (not a table of models); "
            "reinstall napari-microml."
        )
    return manifest


def list_models(task: str | None = None) -> dict:
    """List the shipped models, then the user's own fine-tuned ones.

    Parameters
    ----------
    task : {"atoms", "defects", "completion"}, optional
        Only this task's models (all when None).

    Returns
    -------
    dict
        ``{name: entry}``; each entry holds the model's ``task``, weights ``file``, ``sha256``,
        ``arch`` (architecture) and ``meta`` (training data and settings); the user's own come
        from :mod:`nets.user_models`.
    """
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
    elif not MANIFEST.exists():
        raise ModelIntegrityError(
            f"The model list {MANIFEST} is missing, so no shipped {task} model "
            "can be found; reinstall napari-microml."
        )
    else:
        known = ", ".join(sorted(list_models(task))) or "none"
        raise ValueError(f"No {task} model named {model!r}. Available {task} models: {known}.")
    if not path.is_file():  # listed in the manifest, gone from the disk
        fix = (
            "fine-tune it again or delete its card"
            if manifest.get(name, {}).get("user")
            else "reinstall napari-microml"
        )
        raise ModelIntegrityError(
            f"The weights file {path.name} of model {name!r} is missing from {path.parent}; {fix}."
        )
    digest = file_sha256(path)
    if expected is not None and digest != expected:
        raise ModelIntegrityError(
            f"Weights file {path.name} is damaged or was replaced: sha256 {digest[:12]}… does "
            f"not match the recorded {expected[:12]}…. "
            + (
                "Fine-tune it again or delete it."
                if manifest.get(name, {}).get("user")
                else "Reinstall napari-microml."
            )
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = _build(blob["arch"])
        net.load_state_dict(blob["state_dict"])
    except Exception as err:  # truncated, not a torch file, or another architecture's weights
        raise ValueError(
            f"Could not load {path.name}: it is not a complete napari-microml weights "
            f"file ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})."
        ) from None
    info = {"name": name, "file": path.name, "sha256": digest, "meta": blob.get("meta", {})}
    if expected is None:  # a file given by path: its hash is recorded, but nothing vouches for it
        info["verified"] = False
        info["note"] = (
            "loaded by path: sha256 recorded, not checked against a manifest (unverified)"
        )
    return net.to(device).eval(), info


def model_provenance(info: dict) -> dict:
    """Pick what provenance records about a loaded model.

    That is its name, file and sha256, and, for a file given by path, that it is unverified.
    """
    return {k: info.get(k) for k in ("name", "file", "sha256", "verified", "note") if k in info}


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
        manifest[name] = {
            "file": path.name,
            "task": task,
            "arch": dict(arch),
            "sha256": file_sha256(path),
            "meta": meta or {},
        }
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest[name]
