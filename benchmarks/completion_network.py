"""Judge a candidate completion network beside the shipped one and the local GP (issue #22).

The cases and scoring are benchmarks/completion.py's (imported, not copied): truth-1, truth-2
and held-out synthetic scenes, spiral/grid/line hopping at 1/17.9, 1/50, 1/87 and mask-1.
Rows per case, in the same run: ``local_gp`` (the reference), ``network`` (the shipped
``completion-default``), ``network_signal`` (the same, reporting the σ of the signal instead of
a measurement's) and ``network_candidate``. Besides the benchmark's summary, per case
the candidate's excess RMS over the shipped network's (``candidate_vs_network``).
``--dev``: instead, real images the benchmark does not use (Acquisition_18, SrTiO3 ABF, the SI
survey, Pt/C 021 and 038; 256² centre crops) under spiral, grid, thick-trace and line-hopping
scans at 1/17.9, 1/50, 1/87.
Usage: python benchmarks/completion_network.py --candidate NAME_OR_PATH [--quick] [--dev]
Writes benchmarks/results/completion_network[_dev].json (not with --quick).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import completion as bench  # noqa: E402
import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "completion_network.json"
SHARED = bench.DATA.parent
DEV_IMAGES = (
    "formats/Acquisition_18.emd",
    "formats/stem_abf_data.hspy",
    "formats/DMReader_Image_SI-Survey.dm3",
    "atoms_pt_haadf/images/021_HAADF_15nm_Sample_PtNC_21Oct20.tif",
    "atoms_pt_haadf/images/038_HAADF_15nm_Sample_PtNC_21Oct20.tif",
)


def _signal(model):
    def run(values, mask):
        r = bench.complete_scan(
            np.where(mask, values, np.nan), mask, model=model, device="cpu", sigma="signal"
        )
        return r.image, r.uncertainty, None

    return run


def dev(candidate: str, quick: bool) -> dict:
    import napari_microml as mm
    from napari_microml.completion.masks import scan_mask

    ms = bench.methods(True)
    out: dict = {}
    for rel in DEV_IMAGES[:2] if quick else DEV_IMAGES:
        data = np.asarray(mm.read_file(SHARED / rel)[0][0], np.float64)
        while data.ndim > 2:
            data = data[0]
        h, w = data.shape
        s = min(256, h, w)
        img = data[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        rows = {}
        for kind in ("spiral", "grid", "thick_trace", "line_hopping"):
            for label, cov in bench.COVERAGES.items():
                mask = scan_mask(kind, img.shape, cov, seed=0)
                rows[f"{kind} {label}"] = bench.score(ms, img, img, mask)
        out[Path(rel).name] = rows
        print(rel, "done", file=sys.stderr, flush=True)
    ratios = {
        m: [row[m]["excess_ratio"] for rows in out.values() for row in rows.values()]
        for m in ms
        if m != bench.REFERENCE
    }
    cover = {
        m: [row[m]["within_2sigma_measurement"] for rows in out.values() for row in rows.values()]
        for m in ms
    }
    return {
        "images": out,
        "coverage_2sigma_mean": {m: round(float(np.mean(c)), 4) for m, c in cover.items()},
        "coverage_2sigma_min": {m: min(c) for m, c in cover.items()},
        "geomean_excess_ratio_vs_local_gp": {
            m: round(float(np.exp(np.mean(np.log(r)))), 4) for m, r in ratios.items()
        },
        "max_excess_ratio_vs_local_gp": {m: max(r) for m, r in ratios.items()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--candidate", required=True, help="completion model name or .pt path")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dev", action="store_true", help="real images the benchmark does not use")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    bench.methods = lambda network: {  # the rows this judge compares
        bench.REFERENCE: bench._api(bench.LOCAL_GP),
        "network": bench._api("default"),
        "network_signal": _signal("default"),
        "network_candidate": bench._api(a.candidate),
    }
    result: dict = {"reference": bench.REFERENCE, "candidate": a.candidate, "quick": a.quick}
    if a.dev:
        result |= dev(a.candidate, a.quick)
        text = json.dumps(result, indent=1)
        print(text)
        if not a.quick:
            OUT.with_name("completion_network_dev.json").write_text(text + "\n")
        return
    for part, fn in (("real", bench.real), ("synthetic", bench.synthetic)):
        t = time.perf_counter()
        result[part] = fn(a.quick, True)
        result[part + "_wall_s"] = round(time.perf_counter() - t, 1)
    result["summary"] = bench.summary(result)
    rows = [
        (f"{src}/{label}", row)
        for src in ("truth-1", "truth-2")
        for label, row in result["real"].get(src, {}).items()
    ]
    rows += [(f"synthetic/{label}", row) for label, row in result["synthetic"]["results"].items()]
    per_case = {
        case: round(row["network_candidate"]["excess"] / max(row["network"]["excess"], 1e-300), 4)
        for case, row in rows
    }
    result["candidate_vs_network"] = {
        "excess_ratio_per_case": per_case,
        "max": max(per_case.values()),
        "worst_case": max(per_case, key=per_case.get),
        "cases_worse_than_1.05": sum(v > 1.05 for v in per_case.values()),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if not a.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
