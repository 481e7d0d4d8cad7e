"""Column-check rescue on VALIDATION seeds 9,950,000+ (never the benchmark's 5,000,000+).

Per-class F1 at the given doses over the benchmark's protocol (benchmarks/defects.py: 5 lattices
x 2 scenes x ``--n-seeds`` seeds, 256², spacing uniform 8-18 px, Hungarian matching per class
within 0.5 spacing, 0.5 spacing border ignored), plus how many reported defects came from the
column check. Prints JSON. Usage: python benchmarks/defects_rescue.py [--seed0 9950000]
[--n-seeds 2] [--doses 20,200] (--seed0 must stay a validation seed: 9,000,000+)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from defects import benchmark_images  # the benchmark's own image set

from napari_microml.defects.metrics import classmap_from_labels, score_defects, summarize
from napari_microml.defects.segment import segment_defects

SEED0 = 9_950_000


def main(argv=None):
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed0", type=int, default=SEED0)
    p.add_argument("--n-seeds", type=int, default=2)
    p.add_argument("--doses", default="20,200")
    a = p.parse_args(argv)
    if a.seed0 < 9_000_000:
        p.error("--seed0 below 9,000,000 is training or benchmark data, not validation")
    out = {"seed0": a.seed0, "n_seeds": a.n_seeds}
    for dose in [float(d) for d in a.doses.split(",")]:
        scores, n_rescued = [], 0
        for s, sp in benchmark_images(a.seed0, a.n_seeds, dose, ("crystal", "interface")):
            r = segment_defects(s.image, device="cpu")
            if "source" in r.table:
                n_rescued += int((r.table["source"] == "column check").sum())
            scores.append(
                score_defects(
                    r.table,
                    classmap_from_labels(r.labels, r.table),
                    s.objects,
                    s.classmap,
                    radius=0.5 * sp,
                    margin=0.5 * sp,
                )
            )
        summ = summarize(scores)
        out[str(int(dose))] = {
            "n_images": len(scores),
            "column_check_defects": n_rescued,
            "f1": {k: v["f1"] for k, v in summ.items()},
            "n_pred": {k: v["n_pred"] for k, v in summ.items()},
        }
        print(json.dumps({str(int(dose)): out[str(int(dose))]}), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
