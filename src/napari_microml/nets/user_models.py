"""Models a user fine-tuned on their own images, kept in a per-user folder.

The folder is ``platformdirs.user_data_dir("napari-microml")/models``, or the environment
variable ``NAPARI_MICROML_MODELS`` when set. Each model is three files named after it:
``<name>.pt`` (weights, as :func:`nets.registry.save_model` writes them), ``<name>.json`` (the
model card: base model, source images' sha256, points, steps, seed, validation F1 before/after,
the weights' sha256 and provenance) and ``<name>.md`` (the same card for people). A model is
listed only when its card and weights are both there; the weights are checked against the
card's sha256 before every use (:func:`nets.registry.load_model`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from napari_microml.runtime.provenance import file_sha256

ENV = "NAPARI_MICROML_MODELS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def models_dir(create: bool = False) -> Path:
    """The folder of the user's own models (``$NAPARI_MICROML_MODELS`` or the platform's
    per-user data folder)."""
    folder = os.environ.get(ENV)
    if folder:
        path = Path(folder).expanduser()
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("napari-microml", appauthor=False)) / "models"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str, task: str) -> str:
    """The full registry name (``'<task>-<name>'``) of a new user model, after checking that it
    is a plain file name and is not a shipped model's name."""
    from napari_microml.nets.registry import read_manifest

    if not isinstance(name, str) or not _NAME.match(name.removeprefix(f"{task}-")):
        raise ValueError(
            f"Model name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    full = name if name.startswith(f"{task}-") else f"{task}-{name}"
    if full in read_manifest():
        raise ValueError(
            f"{name!r} is the name of a model shipped with napari-microml; choose another."
        )
    return full


def list_user_models(task: str | None = None) -> dict:
    """``{name: entry}`` of the user's models (optionally one task's), with the same keys as a
    shipped manifest entry plus ``path`` (the weights) and ``card`` (the JSON card's path)."""
    folder = models_dir()
    if not folder.is_dir():
        return {}
    out = {}
    for card_path in sorted(folder.glob("*.json")):
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError):
            continue  # a card being written or damaged: not a usable model
        weights = folder / str(card.get("file", ""))
        if not weights.is_file() or "sha256" not in card or (task and card.get("task") != task):
            continue
        out[card.get("name", card_path.stem)] = {
            **card,
            "path": str(weights),
            "card": str(card_path),
            "user": True,
        }
    return out


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it: a reader (or a
    Stop/crash) never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_user_model(net, name: str, *, task: str, arch: dict, meta: dict, card: dict) -> dict:
    """Write a user model atomically (weights, then the JSON card that lists it, then the
    Markdown card) and return its entry. ``name`` must be new (:func:`check_name`)."""
    import torch

    full = check_name(name, task)
    folder = models_dir(create=True)
    if (folder / f"{full}.json").exists():
        raise ValueError(
            f"A model named {full.removeprefix(task + '-')!r} already exists in {folder}; "
            "choose another name or delete it first."
        )
    weights = folder / f"{full}.pt"
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    _atomic_write(
        weights, lambda p: torch.save({"arch": dict(arch), "state_dict": state, "meta": meta}, p)
    )
    full_card = {
        "name": full,
        "task": task,
        "file": weights.name,
        "sha256": file_sha256(weights),
        "arch": dict(arch),
        "meta": meta,
        **card,
    }
    _atomic_write(
        folder / f"{full}.json", lambda p: p.write_text(json.dumps(full_card, indent=2) + "\n")
    )
    _atomic_write(folder / f"{full}.md", lambda p: p.write_text(card_markdown(full_card)))
    return list_user_models(task)[full]


def delete_user_model(name: str, task: str = "atoms") -> None:
    """Delete a user model's files (the card first, so it is never listed half-deleted)."""
    models = list_user_models(task)
    full = name if name in models else f"{task}-{name}"
    if full not in models:
        known = ", ".join(sorted(n.removeprefix(f"{task}-") for n in models)) or "none"
        raise ValueError(f"No user {task} model named {name!r}. Your {task} models: {known}.")
    card = Path(models[full]["card"])
    for path in (card, Path(models[full]["path"]), card.with_suffix(".md")):
        path.unlink(missing_ok=True)


def card_markdown(card: dict) -> str:
    """The model card for people: what it was trained from and how it scored."""
    val = card.get("validation", {})
    lines = [
        f"# {card['name']}",
        "",
        f"Fine-tuned from `{card.get('base')}` (sha256 {str(card.get('base_sha256'))[:12]}…) on "
        f"{len(card.get('images', []))} image(s) with {card.get('n_points')} corrected points.",
        "",
        f"- Created: {card.get('created')}",
        f"- Steps: {card.get('steps')} (best at {card.get('best_step')}), seed {card.get('seed')}",
        f"- Validation (a {val.get('fraction')} part of each image, kept out of training): "
        f"F1 {val.get('f1_before')} before → {val.get('f1_after')} after, matching within "
        f"{val.get('tolerance_px')} px",
        "- Detection threshold chosen on that part: "
        f"{card.get('meta', {}).get('recommended_threshold')}",
    ]
    blend = card.get("blend") or {}
    if blend.get("alpha") is not None and blend["alpha"] < 1:
        guard = blend.get("guard", {})
        lines.append(
            f"- Weights: {blend['alpha']:.0%} fine-tuned, {1 - blend['alpha']:.0%} the base "
            "(the blend with the best held-out F1"
            + (
                f" among those that find {guard['frames']} simulated crystals at "
                f"{guard.get('doses')} counts within {guard['max_loss']} F1 of the base)"
                if guard.get("max_loss") is not None
                else ")"
            )
        )
    lines += [
        f"- Weights sha256: {card.get('sha256')}",
        "",
        "## Source images",
        "",
    ]
    lines += [
        f"- {im.get('name') or 'image'} {im.get('shape')}: {im.get('n_points')} points, "
        f"sha256 {im.get('sha256')}"
        for im in card.get("images", [])
    ]
    return "\n".join(lines) + "\n"
