"""How soon Cancel can act in the atom finder and the defect segmenter.

A widget's Cancel stops its job at the job's next yield, so the longest stretch between two
yields of the core generator bounds how long Cancel takes. Prints one JSON document: for each
image and tool, the run time, the number of yields and the longest gap (with the two messages
around it), for the default tiles (512 px) beside one 1024 px tile (the network pass in one
piece, as before the tiles were made smaller) in the same process. One torch thread.
Usage: python benchmarks/cancel_points.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _gaps(gen) -> dict:
    """Run a core generator to its end; the longest stretch without a yield."""
    start = last = time.perf_counter()
    worst, where, before, n = 0.0, "", "start", 0
    while True:
        try:
            message = next(gen)
        except StopIteration:
            break
        now, n = time.perf_counter(), n + 1
        text = str(message[-1])
        if now - last > worst:
            worst, where = now - last, f"{before} -> {text}"
        last, before = now, text
    end = time.perf_counter()
    if end - last > worst:
        worst, where = end - last, f"{before} -> end"
    return {
        "run_s": round(end - start, 2),
        "yields": n,
        "longest_gap_s": round(worst, 2),
        "between": where,
    }


def _images() -> dict:
    lattice = np.zeros((1024, 1024))
    lattice[6::12, 6::12] = 1.0
    images = {"synthetic square lattice 1024², 12 px": ndi.gaussian_filter(lattice, 1.5) + 0.01}
    path = DATA / "formats" / "Acquisition_18.emd"
    if path.exists():
        import npe2

        from napari_microml.io.reader import read_file

        npe2.PluginManager.instance().discover()
        images["Acquisition_18.emd (1024², SrTiO3)"] = np.asarray(read_file(path)[0][0], float)
    return images


def main() -> None:
    import torch

    from napari_microml.atoms.finder import find_atoms_iter
    from napari_microml.defects.segment import segment_defects_iter
    from napari_microml.runtime.workers import drain

    torch.set_num_threads(1)
    report: dict = {"torch_threads": 1}
    for name, image in _images().items():
        drain(find_atoms_iter(image[:64, :64], device="cpu"))  # imports and model loads
        report[name] = {
            tool: {
                f"tile {tile}": _gaps(core(image, tile=tile, device="cpu")) for tile in (512, 1024)
            }
            for tool, core in (
                ("atom finder", find_atoms_iter),
                ("defect segmenter", segment_defects_iter),
            )
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
