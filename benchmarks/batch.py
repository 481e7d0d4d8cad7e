"""Batch throughput of ``microml atoms``: 1 local worker vs a 2-worker dask LocalCluster.

Prints one JSON object. Uses the real ``find_atoms`` when it is importable and has a model;
otherwise it says so and times a stand-in (``skimage.feature.peak_local_max``) so the dask
plumbing itself is still measured.

    python benchmarks/batch.py [--frames 200] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def stand_in_atoms(frame, device="auto"):
    """A cheap stand-in for find_atoms: local maxima + a 3×3 centroid."""
    import pandas as pd
    from scipy import ndimage
    from skimage.feature import peak_local_max

    f = ndimage.gaussian_filter(np.asarray(frame, np.float32), 1.0)
    pos = peak_local_max(f, min_distance=3, threshold_rel=0.3).astype(float)
    return {
        "positions": pos,
        "features": pd.DataFrame({"intensity": f[tuple(pos.astype(int).T)]}),
        "provenance": None,
    }


class UntrainedUNetFinder:
    """The real ``find_atoms`` pipeline (U-Net tiles → peaks → Gaussian refinement) with an
    untrained U-Net of the shipped architecture: the right compute cost, meaningless atoms.
    Used for timing when no trained atoms model is shipped. Picklable (the net is built
    lazily on each worker); torch is limited to 1 thread per worker so the comparison is
    per worker."""

    def __init__(self):
        self.net = None

    def __getstate__(self):
        return {"net": None}

    def __call__(self, frame, device="cpu"):
        import torch

        import napari_microml as mm

        torch.set_num_threads(1)
        if self.net is None:
            from napari_microml.nets.unet import UNet
            from napari_microml.training.atoms import ARCH

            torch.manual_seed(0)
            self.net = UNet(**{k: v for k, v in ARCH.items() if k != "kind"})
        r = mm.find_atoms(frame, model=self.net, device=device)
        return {"positions": np.asarray(r.positions), "features": r.features, "provenance": None}


def untrained_available() -> bool:
    try:
        import napari_microml.atoms.finder  # noqa: F401
        import napari_microml.training.atoms  # noqa: F401

        return True
    except Exception:  # noqa: BLE001
        return False


def real_atoms_status() -> str | None:
    """None when the real atom finder can run, else the reason it cannot."""
    try:
        import napari_microml.atoms.finder  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"napari_microml.atoms.finder not importable ({type(err).__name__}: {err})"
    from napari_microml.nets.registry import list_models

    if not list_models("atoms"):
        return "find_atoms is importable but no atoms model is shipped"
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument(
        "--stand-in",
        action="store_true",
        help="time the cheap peak_local_max stand-in instead of the U-Net pipeline",
    )
    args = ap.parse_args()

    from distributed import LocalCluster

    from napari_microml.cli import ADAPTERS, process_items
    from napari_microml.synth.lattice import simulate_lattice

    t0 = time.perf_counter()
    frames = [
        simulate_lattice((args.size, args.size), seed=i).image.astype(np.float32)
        for i in range(args.frames)
    ]
    t_synth = time.perf_counter() - t0

    reason = real_atoms_status()
    if reason is None:
        run, finder = ADAPTERS["atoms"].run, "napari_microml.find_atoms (shipped model)"
    elif untrained_available() and not args.stand_in:
        run = UntrainedUNetFinder()
        finder = "napari_microml.find_atoms with an UNTRAINED U-Net (timing proxy)"
    else:
        run, finder = stand_in_atoms, "stand-in peak_local_max"
    device = "cpu"
    process_items(frames[:2], run, device=device, workers=1, progress=False)  # warm-up

    t0 = time.perf_counter()
    r1 = process_items(frames, run, device=device, workers=1, progress=False)
    t_local1 = time.perf_counter() - t0

    def on_cluster(environ: dict | None):
        import dask

        cfg = {} if environ is None else {"distributed.nanny.pre-spawn-environ": environ}
        with (
            dask.config.set(cfg),
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
        ):
            process_items(
                frames[:4], run, device=device, scheduler=cluster.scheduler_address, progress=False
            )  # warm-up (imports on the workers)
            t0 = time.perf_counter()
            res = process_items(
                frames, run, device=device, scheduler=cluster.scheduler_address, progress=False
            )
            return res, time.perf_counter() - t0

    # dask's default worker environment (MALLOC_TRIM_THRESHOLD_=65536, *_NUM_THREADS=1)
    r2, t_dist2 = on_cluster(None)
    # the same cluster without that environment (glibc's default malloc trimming)
    _, t_dist2_env = on_cluster({})

    same = len(r1) == len(r2) and all(
        np.allclose(a["positions"], b["positions"]) for a, b in zip(r1, r2, strict=True)
    )
    n_atoms = int(sum(len(r["positions"]) for r in r1))
    print(
        json.dumps(
            {
                "benchmark": "microml atoms batch throughput",
                "frames": args.frames,
                "frame_shape": [args.size, args.size],
                "finder": finder,
                "real_finder_unavailable_reason": reason,
                "device": device,
                "local_threads_1_worker": {
                    "seconds": round(t_local1, 3),
                    "frames_per_s": round(args.frames / t_local1, 2),
                },
                "localcluster_2_workers_loopback": {
                    "seconds": round(t_dist2, 3),
                    "frames_per_s": round(args.frames / t_dist2, 2),
                },
                "speedup": round(t_local1 / t_dist2, 2),
                "localcluster_2_workers_no_nanny_environ": {
                    "seconds": round(t_dist2_env, 3),
                    "frames_per_s": round(args.frames / t_dist2_env, 2),
                    "note": "distributed.nanny.pre-spawn-environ = {} (no MALLOC_TRIM_THRESHOLD_)",
                },
                "speedup_no_nanny_environ": round(t_local1 / t_dist2_env, 2),
                "load_average_1min_at_end": round(os.getloadavg()[0], 2),
                "same_positions": bool(same),
                "atoms_found": n_atoms,
                "synthesis_seconds": round(t_synth, 2),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
