"""Does a seeded DKL campaign pick the same points whatever torch's thread count, and what does
running the surrogate on one thread (``ActiveLearner(deterministic=True)``, the default) cost?

One campaign per (deterministic, torch threads) on a Gaussian-blurred dopant map (mostly exact
zeros: ties) used as both structure and property; prints one JSON document with, per setting,
the seconds and whether the measured points equal those of the 1-thread run of the same
setting. ``deterministic=False`` is the baseline (every thread, as before).

Usage: ``python benchmarks/dkl_threads.py [--size 48] [--budget 30] [--threads 1,2,4]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def dopant_map(size: int, n: int, seed: int = 1) -> np.ndarray:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    dop = np.zeros((size, size))
    dop.flat[rng.choice(dop.size, n, replace=False)] = 1.0
    prop = ndi.gaussian_filter(dop, 1.0)
    prop[prop < 1e-3] = 0.0
    return prop


def main():
    import torch

    import napari_microml as mm

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    prop = dopant_map(args.size, max(4, args.size**2 // 150))
    threads = [int(t) for t in args.threads.split(",")]
    out = {
        "size": args.size,
        "budget": args.budget,
        "zeros": round(float((prop == 0).mean()), 3),
        "cpu_threads_available": torch.get_num_threads(),
        "runs": [],
    }
    for det in (False, True):
        first = None
        for n in threads:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            r = mm.run_campaign(
                prop, prop, budget=args.budget, n_initial=5, seed=0, device="cpu", deterministic=det
            )
            secs = time.perf_counter() - t0
            first = r.coords if first is None else first
            same = bool(np.array_equal(r.coords, first))
            diverge = None if same else int(np.argmax((r.coords != first).any(1)))
            out["runs"].append(
                {
                    "deterministic": det,
                    "torch_threads": n,
                    "seconds": round(secs, 1),
                    "same_points_as_first": same,
                    "first_different_measurement": diverge,
                }
            )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
