"""Fine-tune the atom finder on hand-labelled images, scored by leave-one-image-out.

``python -m napari_microml.training.atoms_finetune --data ../shared/data/atoms_pt_haadf``

For each image: fine-tune a copy of the base model on the other images, find atoms on the
held-out image, score it (21×21 px boxes, Hungarian, IoU > 0.5). The reported F1 is the mean
over held-out images. In every fold the detection threshold is chosen on that fold's training
images only. The shipped fine-tuned model is then trained on all images with the same recipe;
its score is the cross-validated one, never a score on its own training images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_microml.runtime.validate import robust_normalize
from napari_microml.synth.render import heatmap
from napari_microml.training.atoms import ARCH, HEAT_SIGMA
from napari_microml.training.common import dihedral, seed_everything


def load_labelled(folder: Path):
    import pandas as pd
    import tifffile

    items = []
    for path in sorted((folder / "images").glob("*.tif")):
        label = folder / "labels" / (path.name.split("_")[0] + "_Results.csv")
        true = pd.read_csv(label)[["Y", "X"]].to_numpy(float)
        img = robust_normalize(tifffile.imread(path).astype(np.float32))
        items.append((path.name, img, true, heatmap(img.shape, true, HEAT_SIGMA)))
    return items


def finetune(base, items, steps, seed, size=96, batch=8, lr=5e-4):
    """Fine-tune ``base`` in place on ``items``; crops are made from the input the base model
    expects (its ``input_kind``, as ``find_atoms`` prepares it), and the module keeps that kind."""
    import torch
    import torch.nn.functional as F

    from napari_microml.atoms.finder import network_input

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    net = base
    kind = getattr(net, "input_kind", "plain")
    inputs = {name: network_input(img, kind) for name, img, _, _ in items}
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        xb, yb = [], []
        for _ in range(batch):
            name, _, true, target = items[rng.integers(len(items))]
            img = inputs[name]
            h, w = img.shape
            if rng.uniform() < 0.7 and len(
                true
            ):  # crops centred near labelled atoms, else anywhere
                c = true[rng.integers(len(true))] + rng.uniform(-size / 3, size / 3, 2)
                y0, x0 = (np.clip(c - size / 2, 0, [h - size, w - size])).astype(int)
            else:
                y0, x0 = rng.integers(0, h - size), rng.integers(0, w - size)
            x, y = dihedral(
                [
                    img[None, y0 : y0 + size, x0 : x0 + size],
                    target[None, y0 : y0 + size, x0 : x0 + size],
                ],
                int(rng.integers(8)),
            )
            xb.append(x * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1))
            yb.append(y)
        xb, yb = torch.from_numpy(np.stack(xb)).float(), torch.from_numpy(np.stack(yb)).float()
        loss = F.binary_cross_entropy_with_logits(net(xb), yb, weight=1 + 9 * yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def pick_threshold(net, items, thresholds) -> float:
    """The probability threshold with the best mean F1 on ``items`` (the training images)."""
    from napari_microml.atoms.finder import find_atoms, local_maxima
    from napari_microml.atoms.metrics import match_boxes

    probs = [find_atoms(img, model=net, refine="none").probability for _, img, _, _ in items]
    f1 = [
        np.mean(
            [
                match_boxes(local_maxima(p, threshold=t, min_distance=2)[0], true)["f1"]
                for p, (_, _, true, _) in zip(probs, items, strict=True)
            ]
        )
        for t in thresholds
    ]
    return float(thresholds[int(np.argmax(f1))])


def main(argv=None):
    import torch

    import napari_microml as mm
    from napari_microml.atoms.metrics import match_boxes
    from napari_microml.nets.registry import load_model, save_model

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[4] / "shared/data/atoms_pt_haadf")
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", default="default")
    p.add_argument("--name", default="atoms-pt-single-atoms")
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args(argv)
    items = load_labelled(Path(a.data))
    if len(items) < 2:
        raise SystemExit(f"Need at least two labelled images under {a.data}.")
    base, info = load_model("atoms", a.base)
    base.input_kind = info["meta"].get(
        "input", "plain"
    )  # find_atoms and finetune read it from the module
    state = {k: v.clone() for k, v in base.state_dict().items()}
    per_image, base_scores = {}, {}
    thresholds = np.round(np.arange(0.15, 0.8, 0.05), 2)
    fixed = {}
    for i, (name, img, true, _) in enumerate(items):
        base.load_state_dict(state)
        base_scores[name] = match_boxes(mm.find_atoms(img, model=base.eval()).positions, true)["f1"]
        train_items = items[:i] + items[i + 1 :]
        net = finetune(base, train_items, a.steps, a.seed + i)
        thr = pick_threshold(net, train_items, thresholds)  # chosen without the held-out image
        per_image[name] = match_boxes(mm.find_atoms(img, model=net, threshold=thr).positions, true)
        fixed[name] = match_boxes(mm.find_atoms(img, model=net, threshold=0.5).positions, true)[
            "f1"
        ]
        print(
            name,
            round(base_scores[name], 3),
            thr,
            {k: round(v, 3) for k, v in per_image[name].items()},
            flush=True,
        )
    cv = {
        k: round(float(np.mean([r[k] for r in per_image.values()])), 4)
        for k in ("precision", "recall", "f1")
    }
    report = {
        "leave_one_image_out": cv,
        "leave_one_image_out_f1_at_threshold_0.5": round(float(np.mean(list(fixed.values()))), 4),
        "per_image_f1": {k: round(v["f1"], 3) for k, v in per_image.items()},
        "base_model_f1_same_images": round(float(np.mean(list(base_scores.values()))), 4),
        "steps": a.steps,
        "seed": a.seed,
        "base": info["name"],
        "base_sha256": info["sha256"],
    }
    print(json.dumps(report, indent=1))
    if not a.no_save:
        base.load_state_dict(state)
        net = finetune(base, items, a.steps, a.seed)
        meta = {
            "data": "atoms_pt_haadf (11 hand-labelled Pt/C HAADF images, MIT)",
            **report,
            "input": base.input_kind,
            "recommended_threshold": pick_threshold(net, items, thresholds),
        }
        print(json.dumps(save_model(net, a.name, task="atoms", arch=ARCH, meta=meta), indent=1))
    torch.set_grad_enabled(True)


if __name__ == "__main__":
    main()
