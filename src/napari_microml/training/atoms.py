"""Train the shipped atom-finder U-Net on simulated images.

Run as ``python -m napari_microml.training.atoms``.

Data: ``synth.lattice.simulate_lattice`` with every scene, lattice, spacing (5–30 px), rotation,
distortion and dose (5–5000 counts/column) drawn at random; the target is a heat map with a
Gaussian of height 1 (σ = 1.25 px) on every true column. Validation uses fresh seeds that
training never sees.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from napari_microml.atoms.finder import INPUTS, network_input
from napari_microml.synth.lattice import simulate_lattice
from napari_microml.synth.render import heatmap
from napari_microml.training.common import (
    Log,
    dihedral,
    lattice_for,
    parse_weights,
    seed_everything,
)

ARCH = {"kind": "unet", "in_channels": 1, "out_channels": 1, "base": 12, "depth": 3}
HEAT_SIGMA = 1.25


SCENE_P = {"crystal": 0.3, "interface": 0.15, "particle": 0.2, "single_atoms": 0.35}


def make_pair(
    seed: int, size: int = 128, scene_p=None, input_kind: str = "plain", lattice_weights=None
):
    scene_p = scene_p or SCENE_P
    scene = np.random.default_rng(seed + 7).choice(list(scene_p), p=list(scene_p.values()))
    s = simulate_lattice(
        (size, size), scene=str(scene), seed=seed, lattice=lattice_for(seed, lattice_weights)
    )
    return network_input(s.image, input_kind)[None], heatmap((size, size), s.positions, HEAT_SIGMA)[
        None
    ]


def make_set(
    n: int,
    first_seed: int,
    size: int = 128,
    scene_p=None,
    input_kind: str = "plain",
    lattice_weights=None,
):
    xs, ys = zip(
        *(make_pair(first_seed + i, size, scene_p, input_kind, lattice_weights) for i in range(n)),
        strict=True,
    )
    return np.stack(xs), np.stack(ys)


def train(
    steps=1500,
    batch=8,
    n_train=2000,
    size=96,
    lr=2e-3,
    seed=0,
    name="atoms-default",
    init=None,
    scene_p=None,
    input_kind="plain",
    lattice_weights=None,
):
    import torch
    import torch.nn.functional as F

    from napari_microml.nets.registry import save_model
    from napari_microml.nets.unet import UNet

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train = make_set(
        n_train,
        first_seed=1_000_000 + seed * 100_000,
        size=size,
        scene_p=scene_p,
        input_kind=input_kind,
        lattice_weights=lattice_weights,
    )
    x_val, y_val = make_set(
        64, first_seed=9_000_000, size=size, input_kind=input_kind
    )  # disjoint seeds
    arch = {k: v for k, v in ARCH.items() if k != "kind"}
    net = UNet(**arch)
    if init:  # warm start from a shipped model (a second training phase)
        from napari_microml.nets.registry import load_model

        net.load_state_dict(load_model("atoms", init)[0].state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    log = Log(every=100)

    def loss_fn(logits, target):
        weight = 1.0 + 9.0 * target
        return F.binary_cross_entropy_with_logits(logits, target, weight=weight)

    for step in range(1, steps + 1):
        net.train()
        idx = rng.integers(0, n_train, batch)
        xs, ys = [], []
        for i in idx:
            x, y = dihedral([x_train[i], y_train[i]], int(rng.integers(8)))
            gain = rng.uniform(0.8, 1.2)
            xs.append(x * gain + rng.uniform(-0.1, 0.1))
            ys.append(y)
        xb = torch.from_numpy(np.stack(xs)).float()
        yb = torch.from_numpy(np.stack(ys)).float()
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        row = {"loss": round(loss.item(), 5)}
        if step % 250 == 0 or step == steps:
            net.eval()
            with torch.no_grad():
                vl = float(loss_fn(net(torch.from_numpy(x_val)), torch.from_numpy(y_val)))
            row["val_loss"] = round(vl, 5)
        log.add(step, **row)
    meta = {
        "data": f"synth.lattice.simulate_lattice, all scenes/lattices, {size}x{size}",
        "n_train_images": n_train,
        "train_seeds": f"{1_000_000 + seed * 100_000}+",
        "val_seeds": "9000000+",
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "init": init,
        "scene_p": scene_p or SCENE_P,
        "heat_sigma": HEAT_SIGMA,
        "input": input_kind,
        "lattice_weights": lattice_weights,
        "final_val_loss": log.rows[-1].get("val_loss"),
    }
    entry = save_model(net, name, task="atoms", arch=ARCH, meta=meta)
    return entry, log.rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="atoms-default")
    p.add_argument("--init", default=None, help="warm start from this shipped model")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--scene-p",
        default=None,
        help=f"scene probabilities {','.join(SCENE_P)} "
        f"(default {','.join(f'{v:g}' for v in SCENE_P.values())})",
    )
    p.add_argument(
        "--input",
        default="plain",
        choices=INPUTS,
        help="network input: robust scaling ('plain') or after flattening the slow background",
    )
    p.add_argument(
        "--lattice-weights",
        default="",
        help="over-sample lattices, e.g. 'dichalcogenide=1.5' (unnamed LATTICES weigh 1; "
        "EXTRA_LATTICES only when named)",
    )
    a = p.parse_args(argv)
    if a.scene_p and len(a.scene_p.split(",")) != len(SCENE_P):
        p.error(
            f"--scene-p needs {len(SCENE_P)} comma-separated probabilities ({','.join(SCENE_P)})"
        )
    weights = parse_weights(a.lattice_weights)
    entry, rows = train(
        steps=a.steps,
        batch=a.batch,
        n_train=a.n_train,
        size=a.size,
        seed=a.seed,
        name=a.name,
        init=a.init,
        lr=a.lr,
        input_kind=a.input,
        lattice_weights=weights,
        scene_p=dict(zip(SCENE_P, map(float, a.scene_p.split(",")), strict=True))
        if a.scene_p
        else None,
    )
    print(json.dumps({"saved": entry, "last": rows[-1]}, indent=1))


if __name__ == "__main__":
    main()
