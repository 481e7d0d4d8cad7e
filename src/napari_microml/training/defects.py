"""Train the shipped defect-segmenter U-Net on simulated crystals
(``python -m napari_microml.training.defects --steps 4000 --seed 0``).

Data: ``synth.defects.simulate_defects`` 128×128 crops, every lattice, spacing 6–24 px, single
crystals and grain boundaries, dose 8–5000 counts/column, 20 % ABF-like dark contrast (inverted
before the network, as ``segment_defects(contrast='dark')`` does). Targets: the per-pixel class
map (6 classes, class-weighted cross-entropy) and a heat map of every atom column (one extra
sigmoid channel that ``segment_defects`` uses for the distance to the nearest column).
Validation uses seeds 9,000,000+ that training never sees; benchmarks use 5,000,000+.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_microml.defects.classes import N_OUTPUTS, class_id
from napari_microml.runtime.validate import robust_normalize
from napari_microml.synth.defects import simulate_defects
from napari_microml.synth.render import heatmap
from napari_microml.training.common import (
    Log,
    budget_lr_factor,
    dihedral,
    lattice_for,
    parse_weights,
    seed_everything,
)

ARCH = {"kind": "unet", "in_channels": 1, "out_channels": N_OUTPUTS + 1, "base": 16, "depth": 3}
HEAT_SIGMA = 1.25
TRAIN_SEED0, VAL_SEED0 = 1_000_000, 9_000_000


def network_input(image: np.ndarray, contrast: str) -> np.ndarray:
    """What the network sees: dark-contrast (ABF) images inverted, then robust 0–1 scaling."""
    image = np.asarray(image, np.float32)
    if contrast == "dark":
        image = image.max() - image
    return robust_normalize(image)


def make_pair(seed: int, size: int = 128, lattice_weights: dict | None = None, dose_range=None):
    dose = None
    if dose_range:  # log-uniform in (low, high) counts/column instead of the simulator's 8-5000
        lo, hi = np.log(dose_range[0]), np.log(dose_range[1])
        dose = float(np.exp(np.random.default_rng([int(seed), 4_243]).uniform(lo, hi)))
    s = simulate_defects(
        (size, size), seed=seed, lattice=lattice_for(seed, lattice_weights), dose=dose
    )
    x = network_input(s.image, s.params["contrast"])[None]
    return x, s.classmap, heatmap((size, size), s.positions, HEAT_SIGMA)


def make_set(
    n: int,
    first_seed: int,
    size: int = 128,
    cache: str | None = None,
    lattice_weights: dict | None = None,
    dose_range=None,
):
    """``n`` simulated crops (x (n,1,s,s) float32, classmap (n,s,s) uint8, heat (n,s,s) float32);
    ``lattice_weights`` (e.g. ``{"perovskite": 3}``) over-samples some lattices (others weigh 1)."""
    tag = (
        "_" + "_".join(f"{k}{v:g}" for k, v in sorted(lattice_weights.items()))
        if lattice_weights
        else ""
    )
    tag += f"_dose{dose_range[0]:g}-{dose_range[1]:g}" if dose_range else ""
    path = Path(cache) / f"C_defects_pool_{size}_{n}_{first_seed}{tag}.npz" if cache else None
    if path is not None and path.exists():
        z = np.load(path)
        return z["x"], z["y"], z["heat"]
    xs, ys, hs = zip(
        *(make_pair(first_seed + i, size, lattice_weights, dose_range) for i in range(n)),
        strict=True,
    )
    x, y, heat = np.stack(xs), np.stack(ys), np.stack(hs)
    if path is not None:
        np.savez(path, x=x, y=y, heat=heat)
    return x, y, heat


def class_weights(y: np.ndarray, power: float = 0.35, cap: float = 15.0) -> np.ndarray:
    """Cross-entropy weights (background / class pixel frequency) ** power, background = 1."""
    freq = np.bincount(y.ravel(), minlength=N_OUTPUTS).astype(float) + 1.0
    return np.clip((freq[0] / freq) ** power, 1.0, cap).astype(np.float32)


def losses(net_out, y, heat, weight):
    import torch.nn.functional as F

    ce = F.cross_entropy(net_out[:, :N_OUTPUTS], y, weight=weight)
    bce = F.binary_cross_entropy_with_logits(net_out[:, N_OUTPUTS], heat, weight=1.0 + 9.0 * heat)
    return ce, bce


def pixel_iou(pred: np.ndarray, y: np.ndarray) -> list[float]:
    out = []
    for c in range(1, N_OUTPUTS):
        union = ((pred == c) | (y == c)).sum()
        out.append(
            round(float(((pred == c) & (y == c)).sum() / union), 4) if union else float("nan")
        )
    return out


def train(
    steps=4000,
    batch=8,
    n_train=4000,
    size=128,
    lr=2e-3,
    seed=0,
    name="defects-default",
    init=None,
    cache="/tmp",
    minutes=None,
    lattice_weights=None,
    out_path=None,
    dose_range=None,
    boost=None,
):
    import torch

    from napari_microml.nets.registry import save_model
    from napari_microml.nets.unet import UNet

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    x_tr, y_tr, h_tr = make_set(
        n_train, TRAIN_SEED0 + seed * 100_000, size, cache, lattice_weights, dose_range
    )
    x_va, y_va, h_va = make_set(64, VAL_SEED0, size, cache)
    w = class_weights(y_tr)
    for name, factor in (
        boost or {}
    ).items():  # extra loss weight on classes the network under-finds
        w[class_id(name)] *= factor
    weight = torch.from_numpy(w)
    print({"class_weights": weight.tolist()}, flush=True)
    net = UNet(**{k: v for k, v in ARCH.items() if k != "kind"})
    if init:  # warm start from a shipped model (a second training phase)
        from napari_microml.nets.registry import load_model

        net.load_state_dict(load_model("defects", init)[0].state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    log = Log(every=50)
    budget_s = 60.0 * minutes if minutes else float("inf")
    step = 0
    while step < steps:
        # one-cycle schedule on progress = max(step / steps, wall time / budget): on a shared
        # CPU the run ends on time, annealed; without a binding budget it is step-exact
        step += 1
        factor = budget_lr_factor(step, steps, time.time() - log.t0, budget_s)
        if factor is None:
            break
        for group in opt.param_groups:
            group["lr"] = lr * factor
        net.train()
        xb, yb, hb = [], [], []
        for i in rng.integers(0, n_train, batch):
            x, y, h = dihedral([x_tr[i], y_tr[i], h_tr[i]], int(rng.integers(8)))
            xb.append(x * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1))
            yb.append(y)
            hb.append(h)
        ce, bce = losses(
            net(torch.from_numpy(np.stack(xb)).float()),
            torch.from_numpy(np.stack(yb)).long(),
            torch.from_numpy(np.stack(hb)).float(),
            weight,
        )
        loss = ce + 0.5 * bce
        opt.zero_grad()
        loss.backward()
        opt.step()
        row = {
            "loss": round(loss.item(), 4),
            "ce": round(ce.item(), 4),
            "lr": round(opt.param_groups[0]["lr"], 6),
        }
        last = step == steps or (time.time() - log.t0) / budget_s >= 0.995
        if step % 250 == 0 or last:
            net.eval()
            with torch.no_grad():
                out = torch.cat(
                    [net(torch.from_numpy(x_va[i : i + 16])) for i in range(0, len(x_va), 16)]
                )
                vce, vbce = losses(
                    out, torch.from_numpy(y_va).long(), torch.from_numpy(h_va), weight
                )
            row["val_ce"], row["val_bce"] = round(float(vce), 4), round(float(vbce), 4)
            row["val_pixel_iou"] = pixel_iou(out[:, :N_OUTPUTS].argmax(1).numpy(), y_va)
            print(log.rows[-1] if log.rows else "", row, flush=True)
        log.add(step, **row)
        if last:
            break
    last_val = next(r for r in reversed(log.rows) if "val_ce" in r)
    meta = {
        "data": "synth.defects.simulate_defects, crystal + interface scenes, all lattices, "
        f"{size}x{size}, "
        "spacing 6-24 px, dose 8-5000, 20% ABF-like (inverted)",
        "outputs": "0-5 class logits (softmax; 0 = defect-free, i = CLASS_NAMES[i-1]), "
        "6 atom-column logit",
        "n_train_images": n_train,
        "train_seeds": f"{TRAIN_SEED0 + seed * 100_000}+",
        "val_seeds": f"{VAL_SEED0}+ (64 images)",
        "steps": log.rows[-1]["step"],
        "max_steps": steps,
        "minutes_budget": minutes,
        "train_minutes": round(log.rows[-1]["time_s"] / 60, 1),
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "init": init,
        "lattice_weights": lattice_weights,
        "dose_range": dose_range,
        "class_weight_boost": boost,
        "heat_sigma": HEAT_SIGMA,
        "class_weights": [round(float(w), 3) for w in weight],
        "final_val": {k: last_val[k] for k in ("val_ce", "val_bce", "val_pixel_iou")},
    }
    if out_path:  # a candidate file for validation; ship it later with ``--promote``
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        torch.save({"arch": dict(ARCH), "state_dict": state, "meta": meta}, out_path)
        return {"file": str(out_path)}, log.rows
    entry = save_model(net, name, task="defects", arch=ARCH, meta=meta)
    return entry, log.rows


def promote(path: str, name: str = "defects-default") -> dict:
    """Ship a candidate file written with ``--out`` as ``name`` (weights + manifest sha256 via
    ``registry.save_model``), keeping its training metadata."""
    import torch

    from napari_microml.nets.registry import load_model, save_model

    net, info = load_model("defects", path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = dict(info["meta"])
    init = str(meta.get("init") or "")
    is_file = init.endswith(".pt")
    # a warm start from a candidate file or a shipped model (perhaps the one this file replaces):
    # keep its recipe, and a candidate file's name rather than its temporary path
    if init and (not is_file or Path(init).is_file()):
        meta["init_meta"] = load_model("defects", init)[1]["meta"]
        if is_file:
            meta["init"] = Path(init).name
    return save_model(net, name, task="defects", arch=blob["arch"], meta=meta)


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="defects-default")
    p.add_argument("--init", default=None, help="warm start from this shipped defects model")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget: the schedule anneals and training stops when it is spent",
    )
    p.add_argument(
        "--lattice-weights",
        default="",
        help="over-sample lattices, e.g. 'perovskite=3' (unnamed LATTICES weigh 1; "
        "EXTRA_LATTICES only when named)",
    )
    p.add_argument(
        "--dose-range",
        default="",
        help="training dose range 'low,high' counts/column (log-uniform)",
    )
    p.add_argument(
        "--boost", default="", help="multiply class loss weights, e.g. 'dopant_bright=1.5'"
    )
    p.add_argument(
        "--out",
        default=None,
        help="write the trained weights to this .pt file instead of shipping them",
    )
    p.add_argument(
        "--promote", default=None, help="ship this candidate .pt file as --name and exit"
    )
    p.add_argument(
        "--cache", default="/tmp", help="folder for the simulated training pool ('' = none)"
    )
    a = p.parse_args(argv)
    if a.promote:
        print(json.dumps({"saved": promote(a.promote, a.name)}, indent=1))
        return
    torch.set_num_threads(a.threads)
    weights, boost = parse_weights(a.lattice_weights), parse_weights(a.boost)
    dose_range = tuple(float(v) for v in a.dose_range.split(",")) if a.dose_range else None
    entry, rows = train(
        steps=a.steps,
        batch=a.batch,
        n_train=a.n_train,
        size=a.size,
        lr=a.lr,
        seed=a.seed,
        name=a.name,
        init=a.init,
        cache=a.cache or None,
        minutes=a.minutes,
        lattice_weights=weights,
        out_path=a.out,
        dose_range=dose_range,
        boost=boost,
    )
    print(json.dumps({"saved": entry, "last": rows[-1]}, indent=1))


if __name__ == "__main__":
    main()
