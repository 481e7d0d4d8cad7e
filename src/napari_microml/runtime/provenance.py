"""Provenance records: what made a result, so it can be reproduced and cited."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
from pathlib import Path
from typing import Any

KEY = "napari_microml"


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def json_safe(value: Any) -> Any:
    """Make parameters JSON-friendly (numpy scalars, tuples, paths, devices)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def make_provenance(
    tool: str,
    *,
    parameters: dict | None = None,
    model: dict | None = None,
    device: str | None = None,
    seed: int | None = None,
    input_name: str | None = None,
    input_file: str | Path | None = None,
) -> dict:
    """A provenance dict for ``layer.metadata['napari_microml']`` and output files.

    ``model`` is the registry's description (``name``, ``file``, ``sha256``); ``input_file``
    is hashed when it exists.
    """
    from napari_microml import __version__

    record = {
        "tool": tool,
        "package": "napari-microml",
        "version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "parameters": json_safe(parameters or {}),
        "model": json_safe(model) if model else None,
        "device": device,
        "seed": seed,
        "input_layer": input_name,
        "python": platform.python_version(),
    }
    if input_file is not None:
        record["input_file"] = str(input_file)
        if Path(input_file).is_file():
            record["input_sha256"] = file_sha256(input_file)
    return record
