"""Train the scan-completion U-Net (``python -m napari_microml.training.completion``).

Phase ``pixel``: the generator (shared U-Net, 4 input planes ``complete.features``, 2 outputs:
residual on the normalised-convolution fill ``fill.normalized_fill`` and log-variance; head
zero-initialised so training starts at the fill) is trained with a relative MSE at unmeasured
pixels (each crop's MSE divided by the MSE of its fill, so noise-free and noisy crops weigh alike)
plus a Gaussian NLL for the variance head (on the detached residual). Phase ``gan``: starts from
the pixel model and adds a least-squares adversarial loss from a 2-scale PatchGAN (conditioned on
the mask) with a small weight. Loss-spike clipping: a step whose loss exceeds ``spike`` × the
running median (last 200 steps) is scaled down to that level. After each phase σ is calibrated by
one factor so ±2σ covers 95 % of held-out validation pixels (fresh seeds), stored as
``meta.sigma_scale``.

Data: a cached pool of ``synth.scenes.simulate_scene`` images (lattices with defects and
interfaces, particles on supports, amorphous textures, edges; Poisson + read noise at
10–5000 counts per unit intensity, a ``--clean-frac`` share noise-free, a ``--vacuum`` share
with a uniform vacuum region behind a specimen edge, a ``--blur`` share seen through a 1-4 px
probe), random crops, dihedral flips, a random scan kind (``--mix legacy``: the six kinds the
first weights saw; ``--mix instrument``: every kind of ``MASK_KINDS``, weighted towards thick
traces; with ``--n-bank`` most masks are windows of whole-field masks) and coverage
(log-uniform ``--cov-min``–``--cov-max``) per sample. The target is the noise-free image. Real
data is never used. Shipped recipe: see nets/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_microml.completion.complete import features, measured_range
from napari_microml.completion.masks import MASK_KINDS, scan_mask
from napari_microml.synth.render import add_noise
from napari_microml.synth.scenes import simulate_scene
from napari_microml.training.common import Log, budget_lr_factor, dihedral, seed_everything

ARCH = {"kind": "unet", "in_channels": 4, "out_channels": 2, "base": 16, "depth": 3}
VAL_SEED = 9_000_000


def pool(
    n: int,
    size: int,
    first_seed: int,
    cache_dir="/tmp",
    clean_frac: float = 0.15,
    vacuum: float = 0.0,
    blur: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (noisy, clean) scenes of ``size``² px (a ``clean_frac`` share noise-free, a ``vacuum``
    share with a vacuum region, a ``blur`` share seen through a Gaussian probe of σ 1-4 px),
    cached as .npz."""
    tag = (f"_vac{vacuum:g}" if vacuum else "") + (f"_blur{blur:g}" if blur else "")
    name = f"microml_completion_pool_v2_{first_seed}_{n}_{size}_{clean_frac:g}{tag}.npz"
    path = Path(cache_dir) / name
    if clean_frac == 0.15 and not path.is_file():  # name used before clean_frac existed
        path = Path(cache_dir) / f"microml_completion_pool_v2_{first_seed}_{n}_{size}.npz"
    if path.is_file():
        z = np.load(path)
        return z["noisy"], z["clean"]
    rng = np.random.default_rng(first_seed)
    doses = np.where(
        rng.uniform(size=n) < clean_frac, np.inf, np.exp(rng.uniform(np.log(10), np.log(5000), n))
    )
    pairs = [
        simulate_scene((size, size), dose=float(doses[i]), seed=first_seed + i, vacuum=vacuum)
        for i in range(n)
    ]
    if blur:
        from scipy import ndimage as ndi

        for i in np.flatnonzero(rng.uniform(size=n) < blur):
            # the probe blurs the signal before the detector adds noise
            clean = ndi.gaussian_filter(pairs[i][1], rng.uniform(1, 4), mode="reflect")
            noisy = clean
            if np.isfinite(doses[i]):
                noisy = add_noise(clean, float(doses[i]), rng, rng.uniform(0, 1.5)) / doses[i]
            pairs[i] = (noisy.astype(np.float32), clean.astype(np.float32))
    noisy, clean = (np.stack(a) for a in zip(*pairs, strict=True))
    np.savez(path, noisy=noisy, clean=clean)
    return noisy, clean


# scan-kind probabilities: "legacy" is what the first weights saw (line hopping came later);
# "instrument" adds the patterns real instruments make, thick traces the most
MIXES = {
    "legacy": {
        "spiral": 0.3,
        "grid": 0.2,
        "lines": 0.1,
        "random": 0.15,
        "random_walk": 0.1,
        "lissajous": 0.15,
    },
    "instrument": {
        "spiral": 0.14,
        "grid": 0.08,
        "lines": 0.04,
        "random": 0.10,
        "random_walk": 0.04,
        "lissajous": 0.08,
        "line_hopping": 0.08,
        "thick_trace": 0.20,
        "partial_lines": 0.06,
        "jittered_grid": 0.06,
        "drifting_grid": 0.06,
        "roi": 0.06,
    },
}
assert all(set(m) <= set(MASK_KINDS) and abs(sum(m.values()) - 1) < 1e-9 for m in MIXES.values())
COVERAGE = (1 / 100, 1 / 10)


def _draw_kind(rng, mix: str) -> str:
    kinds = list(MIXES[mix])
    return str(rng.choice(kinds, p=[MIXES[mix][k] for k in kinds]))


def _draw_coverage(rng, cov_range) -> float:
    return float(np.exp(rng.uniform(np.log(cov_range[0]), np.log(cov_range[1]))))


def mask_bank(
    n: int, seed: int, sizes=(96, 512), mix: str = "legacy", cov_range=COVERAGE
) -> list[np.ndarray]:
    """Masks of whole scan fields of random size, to crop windows from: a 96 px window of a
    512 px spiral has gently curved arms, as in real fields, not always the spiral's centre."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = _draw_kind(rng, mix)
        size = int(np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]))))
        cov = _draw_coverage(rng, cov_range)
        out.append(scan_mask(kind, (size, size), cov, seed=int(rng.integers(2**31))))
    return out


def make_sample(
    noisy,
    clean,
    rng,
    crop: int,
    kind=None,
    coverage=None,
    bank=None,
    field: int = 0,
    mix: str = "legacy",
    cov_range=COVERAGE,
):
    """One training sample: (features (4, c, c), target (c, c) normalised, mask (c, c)).

    ``field`` > ``crop``: the mask, the normalisation and the features are computed on a
    ``field``² window (as on a whole frame at inference, where the fill is computed before
    tiling and sees beyond one tile) and the sample is a random ``crop``² part of it."""
    f = max(crop, min(field, noisy.shape[0], noisy.shape[1]))
    y, x = rng.integers(0, noisy.shape[0] - f + 1), rng.integers(0, noisy.shape[1] - f + 1)
    n, c = dihedral(
        [noisy[y : y + f, x : x + f], clean[y : y + f, x : x + f]], int(rng.integers(8))
    )
    mask = None
    if bank is not None and kind is None and rng.uniform() < 0.7:
        big = bank[int(rng.integers(len(bank)))]
        if min(big.shape) >= f:
            my, mx = rng.integers(0, big.shape[0] - f + 1), rng.integers(0, big.shape[1] - f + 1)
            mask = dihedral([big[my : my + f, mx : mx + f]], int(rng.integers(8)))[0]
            if mask.sum() < 4 or mask.all():
                mask = None
    if mask is None:
        kind = kind or _draw_kind(rng, mix)
        coverage = coverage or _draw_coverage(rng, cov_range)
        mask = scan_mask(kind, (f, f), coverage, seed=int(rng.integers(2**31)))
        if mask.sum() < 4:  # too few pixels to normalise: random pixels at the same coverage
            mask = scan_mask(
                "random", (f, f), max(coverage, 4 / f**2), seed=int(rng.integers(2**31))
            )
    gain = float(np.exp(rng.uniform(-3, 3)))  # any intensity scale: normalisation must absorb it
    lo, hi = measured_range(n * gain, mask)
    feats = features((n * gain - lo) / (hi - lo), mask)
    # clip the target: a bright feature that no measured pixel touched is unknowable and would
    # otherwise dominate the squared loss
    target = np.clip((c * gain - lo) / (hi - lo), -0.5, 2.0).astype(np.float32)
    if f > crop:
        oy, ox = rng.integers(0, f - crop + 1), rng.integers(0, f - crop + 1)
        win = (slice(oy, oy + crop), slice(ox, ox + crop))
        feats, target, mask = feats[(slice(None),) + win], target[win], mask[win]
    return feats, target, mask


def val_set(n: int, crop: int, mix: str = "legacy", cov_range=COVERAGE):
    """Held-out crops (seeds 9,000,000+), every kind of ``mix`` in turn, coverages spread evenly
    (log) over ``cov_range``."""
    rng = np.random.default_rng(VAL_SEED)
    noisy, clean = pool(n, crop, VAL_SEED)
    covs = np.exp(np.linspace(np.log(cov_range[0]), np.log(cov_range[1]), n))
    kinds = list(MIXES[mix])
    out = [
        make_sample(
            noisy[i],
            clean[i],
            rng,
            crop,
            kind=kinds[i % len(kinds)],
            coverage=float(covs[(i * 7) % n]),
        )
        for i in range(n)
    ]
    return [np.stack(a) for a in zip(*out, strict=True)]


def evaluate(net, val, batch: int = 8) -> dict:
    """RMS (normalised units) and raw |z| quantile at unmeasured val pixels."""
    import torch

    x, t, m = val
    preds, logvs = [], []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = net(torch.from_numpy(x[i : i + batch])).numpy()
            preds.append(x[i : i + batch, 2] + out[:, 0])
            logvs.append(out[:, 1])
    pred, logv = np.concatenate(preds), np.concatenate(logvs)
    miss = ~m
    err = (pred - t)[miss]
    z = np.abs(err) / np.exp(0.5 * np.clip(logv[miss], -20, 10))
    fill_err = (x[:, 2] - t)[miss]
    per = [np.sqrt(np.mean((pred[i] - t[i])[~m[i]] ** 2)) for i in range(len(t))]
    per_fill = [np.sqrt(np.mean((x[i, 2] - t[i])[~m[i]] ** 2)) for i in range(len(t))]
    return {
        "val_rms": float(np.sqrt(np.mean(err**2))),
        "val_fill_rms": float(np.sqrt(np.mean(fill_err**2))),
        "val_rms_median": float(np.median(per)),
        "val_fill_rms_median": float(np.median(per_fill)),
        "sigma_scale": float(np.quantile(z, 0.95) / 2.0),
    }


def _batch(noisy, clean, rng, batch, crop, bank=None, field=0, mix="legacy", cov_range=COVERAGE):
    import torch

    idx = rng.integers(0, len(noisy), batch)
    f, t, m = zip(
        *(
            make_sample(
                noisy[i], clean[i], rng, crop, bank=bank, field=field, mix=mix, cov_range=cov_range
            )
            for i in idx
        ),
        strict=True,
    )
    return (
        torch.from_numpy(np.stack(f)),
        torch.from_numpy(np.stack(t))[:, None],
        torch.from_numpy(~np.stack(m))[:, None].float(),
    )


def _pixel_loss(out, x, t, miss, eps: float = 1e-4):
    """Relative MSE (each sample's MSE over its fill's MSE, so clean and noisy, easy and hopeless
    samples weigh alike), plain MSE (for logging) and the Gaussian NLL of the σ head."""
    pred = x[:, 2:3] + out[:, 0:1]
    logv = out[:, 1:2].clamp(-12, 6)
    n = miss.sum((1, 2, 3)).clamp_min(1)
    mse_i = ((pred - t) ** 2 * miss).sum((1, 2, 3)) / n
    fill_i = ((x[:, 2:3] - t) ** 2 * miss).sum((1, 2, 3)) / n
    rel = (mse_i / (fill_i + eps)).mean()
    w = miss / miss.sum().clamp_min(1)
    nll = (0.5 * (logv + (pred.detach() - t) ** 2 * (-logv).exp()) * w).sum()
    return rel, nll, pred, (mse_i.mean(), fill_i.mean())


def train(
    phase="pixel",
    steps=2000,
    batch=8,
    crop=96,
    n_pool=1200,
    pool_size=160,
    lr=2e-3,
    seed=0,
    name=None,
    adv_weight=0.02,
    spike=3.0,
    init=None,
    n_val=48,
    clean_frac=0.15,
    n_bank=0,
    field=0,
    vacuum=0.0,
    blur=0.0,
    mix="legacy",
    cov_range=COVERAGE,
    threads=1,
    pool_seed=None,
    minutes=None,
):
    import torch

    from napari_microml.nets.registry import load_model, save_model
    from napari_microml.nets.unet import UNet

    torch.set_num_threads(threads)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    first = 1_000_000 + (seed if pool_seed is None else pool_seed) * 100_000
    t0 = time.time()
    noisy, clean = pool(n_pool, pool_size, first, clean_frac=clean_frac, vacuum=vacuum, blur=blur)
    val = val_set(n_val, crop, mix, cov_range)
    bank = (
        mask_bank(n_bank, first + 50_000, (max(96, field), 512), mix, cov_range) if n_bank else None
    )
    print(f"pool+val ready in {time.time() - t0:.0f}s", flush=True)
    arch = {k: v for k, v in ARCH.items() if k != "kind"}
    net = UNet(**arch)
    for prm in net.head.parameters():  # start exactly at the fill (residual 0, σ = 1)
        torch.nn.init.zeros_(prm)
    if phase == "gan" or init:
        net.load_state_dict(load_model("completion", init or "completion-pixel")[0].state_dict())
    start = evaluate(net, val)  # the starting weights on the same validation crops
    print("start", {k: round(v, 5) for k, v in start.items()}, flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = (
        None
        if minutes
        else torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.1 if phase == "pixel" else 0.05
        )
    )
    budget_s = 60.0 * minutes if minutes else float("inf")
    disc = d_opt = None
    if phase == "gan":
        from napari_microml.nets.discriminator import MultiScaleDiscriminator, lsgan_loss

        disc = MultiScaleDiscriminator(in_channels=2, base=24, n_layers=3, n_scales=2)
        d_opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    log, history, skipped = Log(every=50), [], 0
    for step in range(1, steps + 1):
        if sched is None:  # a wall-time budget: the schedule follows elapsed time too
            factor = budget_lr_factor(step, steps, time.time() - log.t0, budget_s)
            if factor is None:
                break
            for group in opt.param_groups:
                group["lr"] = lr * factor
        net.train()
        x, t, miss = _batch(noisy, clean, rng, batch, crop, bank, field, mix, cov_range)
        out = net(x)
        rel, nll, pred, (mse, fill_mse) = _pixel_loss(out, x, t, miss)
        loss = rel + 0.01 * nll
        row = {
            "rel": round(rel.item(), 4),
            "mse": round(mse.item(), 6),
            "fill_mse": round(fill_mse.item(), 6),
            "nll": round(nll.item(), 4),
        }
        if disc is not None:
            mask = 1 - miss
            fake = torch.cat([pred, mask], 1)
            adv = lsgan_loss(disc(fake), True)
            loss = loss + adv_weight * adv
            row["adv"] = round(adv.item(), 4)
        history.append(rel.item())
        med = float(np.median(history[-200:]))
        if step > 20 and rel.item() > spike * med:  # loss-spike clipping: scale the step down
            skipped += 1
            loss = loss * (spike * med / rel.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        if disc is not None:
            real = torch.cat([t, mask], 1)
            d_loss = 0.5 * (lsgan_loss(disc(real), True) + lsgan_loss(disc(fake.detach()), False))
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
            row["d"] = round(d_loss.item(), 4)
        if step % 250 == 0 or step == steps or (time.time() - log.t0) / budget_s >= 0.995:
            row.update({k: round(v, 5) for k, v in evaluate(net, val).items()})
        log.add(step, **row)
    final = evaluate(net, val)
    name = name or ("completion-pixel" if phase == "pixel" else "completion-default")
    meta = {
        "phase": phase,
        "init": init or ("completion-pixel" if phase == "gan" else None),
        "clean_frac": clean_frac,
        "vacuum": vacuum,
        "blur": blur,
        "mask_mix": mix,
        "mask_bank": n_bank,
        "feature_field": max(field, crop),
        "data": f"synth.scenes.simulate_scene pool of {n_pool} images {pool_size}px, "
        f"crops {crop}px, "
        f"scan kinds {','.join(MIXES[mix])}, "
        f"coverage log-uniform 1/{1 / cov_range[1]:g}-1/{1 / cov_range[0]:g}",
        "train_seeds": f"{first}..{first + n_pool - 1}",
        "val_seeds": f"{VAL_SEED}..{VAL_SEED + n_val - 1}",
        "steps": log.rows[-1]["step"],
        "max_steps": steps,
        "minutes_budget": minutes,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "adv_weight": adv_weight if disc else 0.0,
        "spike_factor": spike,
        "clipped_steps": skipped,
        "features": "values,mask,nconv_fill,log1p_dist/3",
        "output": "residual_on_fill,log_variance",
        "sigma_scale": final["sigma_scale"],
        "val_rms_normalised": final["val_rms"],
        "val_fill_rms_normalised": final["val_fill_rms"],
        "val_rms_median_normalised": final["val_rms_median"],
        "val_fill_rms_median_normalised": final["val_fill_rms_median"],
        "val_start_rms_median_normalised": start["val_rms_median"],
        "val_start_sigma_scale": start["sigma_scale"],
        "train_time_s": round(time.time() - t0),
    }
    entry = save_model(net, name, task="completion", arch=ARCH, meta=meta)
    return entry, log.rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--phase", choices=("pixel", "gan"), default="pixel")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--n-pool", type=int, default=1200)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--adv-weight", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-val", type=int, default=48)
    p.add_argument(
        "--clean-frac", type=float, default=0.15, help="share of noise-free training images"
    )
    p.add_argument(
        "--n-bank", type=int, default=0, help="whole-field masks to crop windows from (0: none)"
    )
    p.add_argument(
        "--field",
        type=int,
        default=0,
        help="compute mask and features on a field this large, then crop (0: on the crop)",
    )
    p.add_argument(
        "--vacuum", type=float, default=0.0, help="share of training scenes with a vacuum region"
    )
    p.add_argument("--blur", type=float, default=0.0, help="share of scenes with probe blur")
    p.add_argument("--mix", choices=sorted(MIXES), default="legacy", help="scan-kind mix")
    p.add_argument("--cov-min", type=float, default=COVERAGE[0], help="lowest coverage")
    p.add_argument("--cov-max", type=float, default=COVERAGE[1], help="highest coverage")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--minutes", type=float, default=None, help="wall-time budget; the LR schedule follows it"
    )
    p.add_argument(
        "--pool-seed", type=int, default=None, help="scene pool seed block (default: --seed)"
    )
    p.add_argument("--name", default=None)
    p.add_argument("--init", default=None, help="warm start from this shipped completion model")
    a = p.parse_args(argv)
    lr = a.lr if a.lr is not None else (1e-3 if a.phase == "pixel" else 2e-4)
    entry, rows = train(
        phase=a.phase,
        steps=a.steps,
        batch=a.batch,
        crop=a.crop,
        n_pool=a.n_pool,
        lr=lr,
        seed=a.seed,
        name=a.name,
        adv_weight=a.adv_weight,
        init=a.init,
        n_val=a.n_val,
        clean_frac=a.clean_frac,
        n_bank=a.n_bank,
        field=a.field,
        vacuum=a.vacuum,
        blur=a.blur,
        mix=a.mix,
        cov_range=(a.cov_min, a.cov_max),
        threads=a.threads,
        pool_seed=a.pool_seed,
        minutes=a.minutes,
    )
    print(json.dumps({"saved": entry, "last": rows[-1]}, indent=1))


if __name__ == "__main__":
    main()
