"""Shift-VAE benchmark: prints one JSON object.

Synthetic sets with exact truth (the published single-Gaussian set and a harder two-peak set):
R² of the recovered shift against the true centre and the best |r| of a content latent with
the true width, side by side with PCA (best component), a plain VAE (best latent) and
cross-correlation alignment to the mean spectrum. Real data: LSMO low-loss EELS line scan
(shift vs Gaussian zero-loss-peak centre) and BEPS PTO loops (what the shift captures).

    .venv/bin/python benchmarks/spectra.py [--epochs N] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def r2(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1] ** 2)


def absr(a, b):
    return float(abs(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]))


def pca(X, k=5):
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ vt[:k].T


def evaluate(X, x, truth, epochs, device, shift_prior, seed=0):
    from napari_microml.spectra.preprocess import cross_correlation_shift
    from napari_microml.spectra.shift_vae import fit_shift_vae

    centre, width = truth["centre"], truth["width"]
    out = {}
    t0 = time.perf_counter()
    r = fit_shift_vae(
        X, axis=x, latent_dim=2, epochs=epochs, shift_prior=shift_prior, seed=seed, device=device
    )
    out["shift_vae"] = {
        "fit_seconds": round(time.perf_counter() - t0, 2),
        "r2_shift_vs_centre": round(r2(r.shift, centre), 4),
        "slope_shift_vs_centre": round(float(np.polyfit(centre, r.shift, 1)[0]), 4),
        "best_latent_abs_r_width": round(max(absr(r.latents[:, i], width) for i in range(2)), 4),
        "max_latent_abs_r_centre": round(max(absr(r.latents[:, i], centre) for i in range(2)), 4),
        "final_loss": round(r.loss_history[-1], 3),
        "device": r.device,
    }
    t0 = time.perf_counter()
    p = fit_shift_vae(
        X, axis=x, latent_dim=2, epochs=epochs, model="plain", seed=seed, device=device
    )
    out["plain_vae"] = {
        "fit_seconds": round(time.perf_counter() - t0, 2),
        "best_latent_r2_centre": round(max(r2(p.latents[:, i], centre) for i in range(2)), 4),
        "best_latent_abs_r_width": round(max(absr(p.latents[:, i], width) for i in range(2)), 4),
    }
    comps = pca(X)
    out["pca"] = {
        "best_component_r2_centre": round(max(r2(comps[:, i], centre) for i in range(5)), 4),
        "best_component_abs_r_width": round(max(absr(comps[:, i], width) for i in range(5)), 4),
    }
    cc = cross_correlation_shift(X, x)
    out["cross_correlation"] = {"r2_shift_vs_centre": round(r2(cc, centre), 4)}
    return out


def zlp_centres(X, e):
    from napari_microml.spectra.preprocess import gaussian_peak_centres

    return gaussian_peak_centres(X, e)


def lsmo(device):
    from rsciio.hspy import file_reader

    from napari_microml.spectra.preprocess import cross_correlation_shift
    from napari_microml.spectra.shift_vae import fit_shift_vae

    path = DATA / "spectra" / "LSMO_linescan_low_loss.hspy"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    d = file_reader(str(path))[0]
    X = np.asarray(d["data"], np.float32)
    ax = d["axes"][-1]
    e = float(ax["offset"]) + float(ax["scale"]) * np.arange(X.shape[-1])
    c = zlp_centres(X, e)
    k = int(np.argmax(X.mean(0)))
    cr = (k - 16, k + 19)
    r = fit_shift_vae(X, axis=e, channel_range=cr, shift_prior=1.0, seed=0, device=device)
    seeds = [
        float(
            np.corrcoef(
                fit_shift_vae(
                    X, axis=e, channel_range=cr, shift_prior=1.0, seed=s, device=device
                ).shift,
                c,
            )[0, 1]
        )
        for s in (1, 2)
    ]
    cc = cross_correlation_shift(X[:, cr[0] : cr[1]], e[cr[0] : cr[1]])
    return {
        "n_spectra": int(X.shape[0]),
        "channels_used": list(cr),
        "zlp_centre_range_eV": round(float(np.ptp(c)), 4),
        "pearson_shift_vs_zlp_gaussian_centre": round(float(np.corrcoef(r.shift, c)[0, 1]), 4),
        "pearson_other_seeds": [round(s, 4) for s in seeds],
        "slope_shift_vs_centre": round(float(np.polyfit(c, r.shift, 1)[0]), 4),
        "cross_correlation_pearson": round(float(np.corrcoef(cc, c)[0, 1]), 4),
    }


def beps(device, epochs):
    import h5py
    from scipy.ndimage import median_filter

    from napari_microml.spectra.shift_vae import fit_shift_vae

    path = DATA / "dkl" / "BEPS_PTO_50x50.h5"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    with h5py.File(path, "r") as f:
        loops = np.asarray(f["Channel_000/generic/generic"], np.float32)
        volt = np.asarray(f["Channel_000/generic/Voltage"], float)
    clean = median_filter(loops, size=(1, 1, 3), mode="wrap")  # spikes along the bias waveform
    X = clean.reshape(-1, clean.shape[-1])
    # loop features: waveform step of the largest response change on each half-cycle
    half = X.shape[1] // 2
    dX = np.diff(X, axis=1)
    up = np.argmax(np.abs(dX[:, :half]), axis=1)
    down = half + np.argmax(np.abs(dX[:, half:]), axis=1)
    switch_step = 0.5 * (up + down)
    imprint = 0.5 * (volt[up] + volt[down])  # mean bias of the two switching events
    amplitude = X.max(1) - X.min(1)
    out = {
        "shape": list(loops.shape),
        "axis": "waveform step (triangle bias 0->8.5->-8.5->0 V)",
        "loop_amplitude_percentiles_5_50_95": [
            float(f"{v:.3g}") for v in np.percentile(amplitude, [5, 50, 95])
        ],
    }
    for norm in ("global", "max"):
        r = fit_shift_vae(
            X, latent_dim=2, epochs=epochs, shift_prior=3.0, normalize=norm, seed=0, device=device
        )
        smap = r.shift.reshape(loops.shape[:2])
        out[f"normalize_{norm}"] = {
            "shift_std_steps": round(float(r.shift.std()), 3),
            "shift_map_neighbour_r": round(
                float(np.corrcoef(smap[:, :-1].ravel(), smap[:, 1:].ravel())[0, 1]), 4
            ),
            "abs_r_shift_vs_mean_switching_step": round(absr(r.shift, switch_step), 4),
            "abs_r_shift_vs_up_switching_step": round(absr(r.shift, up), 4),
            "abs_r_shift_vs_down_switching_step": round(absr(r.shift, down), 4),
            "abs_r_shift_vs_imprint_bias": round(absr(r.shift, imprint), 4),
            "abs_r_shift_vs_loop_amplitude": round(absr(r.shift, amplitude), 4),
            "best_latent_abs_r_amplitude": round(
                max(absr(r.latents[:, i], amplitude) for i in range(2)), 4
            ),
        }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=None, help="default: the core's automatic choice")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()

    import torch

    from napari_microml.synth.spectra import gaussian_peaks, two_peak_spectra

    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"torch_threads": torch.get_num_threads(), "epochs": args.epochs or "auto"}
    X, x, t = gaussian_peaks(args.n, 100, seed=0)
    res["published_gaussian_5000x100"] = evaluate(X, x, t, args.epochs, args.device, 2.0)
    X, x, t = two_peak_spectra(args.n, 100, seed=0)
    res["two_peak_hard"] = evaluate(X, x, t, args.epochs, args.device, 2.0)
    res["lsmo_low_loss"] = lsmo(args.device)
    res["beps_pto"] = beps(args.device, args.epochs)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
