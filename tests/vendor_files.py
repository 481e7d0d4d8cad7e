"""Files as other instruments' software writes them, for tests (built in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_hspy(path: Path, data: np.ndarray, axes: list[tuple], signal_type: str = "") -> None:
    """A HyperSpy file as a microscope export carries it; ``axes`` lists
    ``(name, scale, offset, units, navigate)`` in array order."""
    from rsciio.hspy import file_writer

    signal = {
        "data": data,
        "axes": [
            {"name": n, "scale": s, "offset": o, "units": u, "size": size, "navigate": nav}
            for (n, s, o, u, nav), size in zip(axes, data.shape, strict=True)
        ],
        "metadata": {"General": {"title": path.stem}, "Signal": {"signal_type": signal_type}},
        "original_metadata": {},
        "tmp_parameters": {},
        "attributes": {"_lazy": False},
        "package_info": {"name": "", "version": ""},
        "learning_results": {},
        "models": {},
    }
    file_writer(str(path), signal)
