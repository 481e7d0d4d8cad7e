"""The defect classes every part of the defect segmenter agrees on, with fixed colours.

Index 0 of the network output is the defect-free lattice/background; ``CLASS_NAMES[i - 1]`` is
the name of output class ``i``. Colours are RGBA in [0, 1] and never change between runs, so a
vacancy is always the same colour in every image and screenshot.
"""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "vacancy",
    "dopant_bright",
    "dopant_dim",
    "interstitial",
    "extended",
)
"""Point defects (vacancy, brighter/dimmer substitutional dopant, interstitial or adatom) and
extended regions (grain boundary, amorphous or contaminated patch)."""

CLASS_COLORS: dict[str, tuple[float, float, float, float]] = {
    "vacancy": (0.0, 0.85, 1.0, 1.0),
    "dopant_bright": (1.0, 0.25, 0.2, 1.0),
    "dopant_dim": (0.65, 0.35, 1.0, 1.0),
    "interstitial": (1.0, 0.85, 0.1, 1.0),
    "extended": (0.3, 0.9, 0.3, 1.0),
}

N_OUTPUTS = len(CLASS_NAMES) + 1  # + the defect-free background


def class_id(name: str) -> int:
    """Network output index of a class name (1-based; 0 is background)."""
    try:
        return CLASS_NAMES.index(name) + 1
    except ValueError:
        raise ValueError(
            f"Unknown defect class {name!r}; the classes are {', '.join(CLASS_NAMES)}."
        ) from None
