"""napari-microml: deep learning for electron and scanning-probe microscopy.

The public API is imported lazily so that ``import napari_microml`` (and napari's
plugin discovery) stays fast and does not load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "find_atoms": "napari_microml.atoms.finder",
    "finetune_atoms": "napari_microml.atoms.finetune",
    "list_models": "napari_microml.nets.registry",
    "refine_positions": "napari_microml.atoms.refine",
    "segment_defects": "napari_microml.defects.segment",
    "classify_environments": "napari_microml.defects.environments",
    "scan_mask": "napari_microml.completion.masks",
    "complete_scan": "napari_microml.completion.complete",
    "ActiveLearner": "napari_microml.dkl.learner",
    "run_campaign": "napari_microml.dkl.learner",
    "fit_shift_vae": "napari_microml.spectra.shift_vae",
    "read_file": "napari_microml.io.reader",
    "analyze_lattice": "napari_microml.lattice.analyze",
    "count_atoms": "napari_microml.lattice.counting",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_microml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
