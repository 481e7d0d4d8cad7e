"""Atom finder on scanning-probe copies of real lattice images: ``scan="auto"`` (the frame alone
decides) beside ``scan="spm"`` (the layer came from an SPM file), and the electron images'
detections with the default, which must not change.

    python benchmarks/spm_scan.py [--only spm,electron] [--out FILE]

Prints JSON. The SPM copies are those of ``benchmarks/generalise.py`` (synth/scanprobe.py);
truth: the unperturbed crop's own detections mapped through the shear, F1 within 1.5 px.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import napari_microml as mm
from napari_microml.atoms.metrics import match_points

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalise import A18_NM, DATA, SPM_VARIANTS, _read  # noqa: E402

CROPS = (
    ("Acquisition_18 512 crop", "formats/Acquisition_18.emd", A18_NM, 512),
    ("ABF SrTiO3 384 crop", "formats/stem_abf_data.hspy", 0.00933, 384),
)
VARIANTS = {"unperturbed, as an SPM file": {"plane": 0, "lines": 0, "shear": 0}, **SPM_VARIANTS}
REAL = (
    "formats/Acquisition_18.emd",
    "formats/stem_abf_data.hspy",
    "formats/DMReader_Image_SI-Survey.dm3",
    "dkl/CuZn_HAADF.hspy",
    "completion/truth-1.tif",
    "completion/truth-2.tif",
)


def spm_section() -> dict:
    from napari_microml.synth.scanprobe import scanning_probe

    rows: dict = {}
    for name, rel, px, crop in CROPS:
        full = _read(rel)
        h, w = full.shape
        img = full[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
        base = mm.find_atoms(img, pixel_size=px).positions
        res: dict = {"baseline columns": len(base)}
        for vname, kw in VARIANTS.items():
            x = scanning_probe(img, **kw)
            sh = kw.get("shear", 0.0)
            truth = np.column_stack([base[:, 0], base[:, 1] - sh * base[:, 0]])
            entry = {}
            for scan in ("auto", "spm"):
                r = mm.find_atoms(x, pixel_size=px, scan=scan)
                entry[scan] = {
                    "f1": round(match_points(r.positions, truth, max_distance=1.5)["f1"], 3),
                    "n": len(r.positions),
                    "model": r.parameters["model_choice"].get("chosen"),
                    "levelling": r.parameters.get("levelling"),
                }
            res[vname] = entry
            print(name, vname, entry, file=sys.stderr, flush=True)
        rows[name] = res
    return rows


def electron_section() -> dict:
    """Column positions with the default on the real electron images (for a before/after diff)."""
    out = {}
    paths = [
        *REAL,
        *(
            f"atoms_pt_haadf/images/{p.name}"
            for p in sorted((DATA / "atoms_pt_haadf" / "images").glob("*.tif"))
        ),
    ]
    for rel in paths:
        x = np.squeeze(_read(rel)).astype(float)
        if x.ndim != 2:
            continue
        r = mm.find_atoms(x)
        out[rel.split("/")[-1]] = {
            "n": len(r.positions),
            "positions_sum": round(float(np.sum(r.positions)), 6),
            "levelling": r.parameters.get("levelling"),
        }
        print(rel, out[rel.split("/")[-1]], file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="spm,electron")
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out: dict = {}
    if "spm" in args.only:
        out["scanning-probe copies: F1, scan='auto' vs 'spm'"] = spm_section()
    if "electron" in args.only:
        out["real electron images, default"] = electron_section()
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
