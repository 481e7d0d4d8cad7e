"""``microml``: batch runs of the napari-microml tools over files, folders and stacks.

Examples
--------
::

    microml --version
    microml models
    microml atoms stack.tif more/ --out results/ --workers 4
    microml defects image.dm4 --out results/ --scheduler tcp://127.0.0.1:8786
    microml spectra si.hspy --out results/
    microml complete sparse_scans/ --out filled/ --model local-gp

Each input file is read with :func:`napari_microml.io.reader.read_file`. Frames of every stack
are processed in parallel with ``dask.delayed`` (local threads by default, or a
``dask.distributed`` cluster with ``--scheduler``). All inputs are validated before anything
runs; results are written to a temporary folder inside ``--out`` and moved into place only
when every input succeeded, so a failed run leaves nothing half-written.

Exit codes: 0 success, 2 bad input or usage (one-line reason on stderr), 1 a tool failed.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


class InputError(ValueError):
    """Bad input: reported as one line on stderr with exit code 2."""


# --------------------------------------------------------------------------- adapters
# Each adapter takes one item (a 2D frame, or an (N, L) spectra block) and returns a dict of
# plain numpy / pandas results, so it pickles to dask.distributed workers.
def _atoms(frame: np.ndarray, device: str = "auto", model: str = "default", rescale: str = "auto") -> dict:
    import napari_microml as mm

    r = mm.find_atoms(frame, device=device, model=model, rescale=rescale)
    return {"positions": np.asarray(r.positions, float).reshape(-1, 2),
            "features": _frame_table(r.features),
            "provenance": getattr(r, "provenance", None)}


def _defects(frame: np.ndarray, device: str = "auto", model: str = "auto", rescale: str = "auto") -> dict:
    import napari_microml as mm

    d = mm.segment_defects(frame, device=device, model=model, rescale=rescale)
    return {"labels": np.asarray(d.labels, np.int32), "table": _frame_table(d.table),
            "provenance": getattr(d, "provenance", None)}


def _complete(frame: np.ndarray, device: str = "auto", model: str = "default") -> dict:
    import napari_microml as mm

    values, mask = scan_mask_from_frame(frame)
    c = mm.complete_scan(values, mask, device=device, model=model)
    return {"image": np.asarray(c.image, np.float32),
            "uncertainty": np.asarray(c.uncertainty, np.float32),
            "provenance": getattr(c, "provenance", None)}


def _spectra(item: dict, device: str = "auto") -> dict:
    """``item = {"spectra": (N, L), "axis": (L,) energy values or None}``."""
    import napari_microml as mm

    spectra = np.asarray(item["spectra"], np.float32)
    v = mm.fit_shift_vae(spectra, axis=item.get("axis"), device=device)
    latents = np.asarray(v.latents, np.float32)
    return {"shift": np.asarray(v.shift, np.float32).reshape(-1),
            "latents": latents.reshape(len(spectra), -1),
            "provenance": getattr(v, "provenance", None)}


def scan_mask_from_frame(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measured pixels of a partial scan: finite ones; if all are finite, the non-zero ones."""
    frame = np.asarray(frame, np.float32)
    mask = np.isfinite(frame)
    if mask.all():
        mask = frame != 0
    return np.where(mask, frame, 0).astype(np.float32), mask


def _frame_table(table):
    import pandas as pd

    if table is None:
        return pd.DataFrame()
    return table.reset_index(drop=True) if isinstance(table, pd.DataFrame) else pd.DataFrame(
        {k: np.asarray(v) for k, v in dict(table).items()})


@dataclass
class Adapter:
    """One tool as the CLI sees it: ``run(item, device) -> dict`` and how items are cut."""

    run: Callable[..., dict]
    per: str  # "frame": 2D frames of images/stacks; "spectra": one (N, L) block per input
    help: str
    task: str | None = None  # the model registry's task when the tool takes --model
    rescale: bool = False  # the tool takes --rescale (lattice tools: runtime/spacing.py)


def model_choices(tool: str) -> list[str]:
    """Names ``--model`` accepts for ``tool`` (shipped weights, plus kriging for complete and
    'auto' for defects)."""
    from napari_microml.nets.registry import list_models

    task = ADAPTERS[tool].task
    if task is None:
        return []
    names = sorted(n.removeprefix(f"{task}-") for n in list_models(task))
    if tool == "defects":  # picks 'dichalcogenide' or 'default' per input (defects/material.py)
        names.insert(0, "auto")
    if tool == "complete":
        from napari_microml.completion.complete import LOCAL_GP

        names.append(LOCAL_GP)
    return names


ADAPTERS: dict[str, Adapter] = {
    "atoms": Adapter(_atoms, "frame", "find atomic columns → <name>_atoms.csv", "atoms", rescale=True),
    "defects": Adapter(_defects, "frame", "segment defects → <name>_defects.tif + table CSV", "defects",
                       rescale=True),
    "complete": Adapter(_complete, "frame",
                        "complete partial scans (NaN or 0 = not measured) → image + uncertainty TIFF",
                        "completion"),
    "spectra": Adapter(_spectra, "spectra",
                       "shift-VAE on a spectrum image → shift map TIFF + latents CSV"),
}


# ------------------------------------------------------------------------------ inputs
@dataclass
class Job:
    """One image (or spectrum image) from one input file."""

    source: Path
    stem: str
    data: Any           # numpy or dask array
    kwargs: dict        # reader kwargs (scale, units, metadata ...)
    items: list         # per-item arrays handed to the adapter
    is_stack: bool
    shape: tuple        # spatial shape for spectra (H, W) maps


def _supported_in(folder: Path) -> list[Path]:
    from napari_microml.io.reader import get_reader

    return sorted(p for p in folder.iterdir() if p.is_file() and get_reader(str(p)) is not None)


def collect_inputs(inputs: list[str]) -> list[tuple[Path, bool]]:
    """Expand folders (non-recursive) and check every file exists and is supported.

    Returns ``(path, from_folder)`` pairs.
    """
    from napari_microml.io.reader import FORMATS, get_reader

    files: list[tuple[Path, bool]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = _supported_in(p)
            if not found:
                raise InputError(f"folder {p} contains no readable images "
                                 f"({', '.join(sorted(FORMATS))}).")
            files.extend((f, True) for f in found)
        elif not p.exists():
            raise InputError(f"{p} does not exist.")
        elif p.suffix.lower() not in FORMATS:
            raise InputError(f"{p.name}: '{p.suffix or 'no extension'}' files are not supported "
                             f"(supported: {', '.join(sorted(FORMATS))}).")
        elif get_reader(str(p)) is None:
            raise InputError(f"{p.name} is not a file this reader understands.")
        else:
            files.append((p, False))
    return files


def _unsuitable(name: str, data, kwargs: dict, tool: str) -> str | None:
    """Why a layer cannot go to ``tool`` (one sentence), or None when it can."""
    per = ADAPTERS[tool].per
    spectral = kwargs.get("metadata", {}).get("napari_microml", {}).get("spectral_axis")
    if kwargs.get("rgb"):
        return f"{name} is an RGB colour picture; {tool} needs grey images."
    if np.dtype(data.dtype).kind not in "biuf":
        return f"{name} holds {data.dtype} values, not numbers."
    if per == "frame":
        if spectral is not None:
            return (f"{name} is a spectrum image (last axis {spectral['name']!r}); "
                    "use 'microml spectra' for it.")
        if data.ndim not in (2, 3):
            return (f"{name} has {data.ndim}D data {tuple(data.shape)}; "
                    f"{tool} takes 2D images or 3D stacks (frames, H, W).")
        if min(data.shape[-2:]) < 8:
            return (f"{name}: frames of {data.shape[-2]}×{data.shape[-1]} pixels are too "
                    "small (at least 8×8).")
        return None
    if data.ndim not in (2, 3):
        return (f"{name} has {data.ndim}D data {tuple(data.shape)}; "
                "spectra takes (N, L) spectra or (H, W, L) spectrum images.")
    if spectral is None and data.shape[-1] < 8:
        return f"{name} does not look like spectra (shape {tuple(data.shape)})."
    return None


def load_jobs(files: list, tool: str) -> list[Job]:
    """Read (lazily where large) and validate every input before any work starts.

    An explicitly named single-dataset file that the tool cannot take is an error; datasets
    found through a folder, or extra datasets of a multi-dataset file (e.g. the EDS spectrum
    beside the HAADF image in a Velox .emd), are skipped with a note when unsuitable.
    """
    from napari_microml.io.reader import read_file

    per = ADAPTERS[tool].per
    jobs: list[Job] = []
    stems: set[str] = set()
    skipped: list[str] = []
    for entry in files:
        f, from_folder = entry if isinstance(entry, tuple) else (Path(entry), False)
        try:
            layers = read_file(f)
        except ValueError as err:
            raise InputError(str(err)) from err
        for k, (data, kwargs, _) in enumerate(layers):
            name = f.name if len(layers) == 1 else f"{f.name} [{kwargs.get('name', k)}]"
            reason = _unsuitable(name, data, kwargs, tool)
            if reason is not None:
                if not from_folder and len(layers) == 1:
                    raise InputError(reason)
                skipped.append(reason)
                continue
            stem = f.stem if len(layers) == 1 else f"{f.stem}_{k}"
            while stem in stems:
                stem += "_"
            stems.add(stem)
            if per == "frame":
                items = [data] if data.ndim == 2 else [data[i] for i in range(data.shape[0])]
                jobs.append(Job(f, stem, data, kwargs, items, data.ndim == 3,
                                tuple(data.shape[-2:])))
            else:
                spectral = kwargs["metadata"]["napari_microml"].get("spectral_axis")
                block = data.reshape(-1, data.shape[-1])
                axis = None
                if spectral is not None:
                    axis = spectral["offset"] + spectral["scale"] * np.arange(data.shape[-1])
                jobs.append(Job(f, stem, data, kwargs, [{"spectra": block, "axis": axis}],
                                False, tuple(data.shape[:-1])))
    if not jobs:
        raise InputError(skipped[0] if len(skipped) == 1 else
                         f"nothing in the inputs suits {tool}: {len(skipped)} dataset(s) "
                         f"skipped (first: {skipped[0] if skipped else 'none'})")
    for reason in skipped:
        print(f"microml: skipped {reason}", file=sys.stderr)
    return jobs


# ----------------------------------------------------------------------------- running
def process_items(items: list, run: Callable, *, device: str = "auto",
                  scheduler: str | None = None, workers: int | None = None,
                  progress: bool = True) -> list[dict]:
    """Run ``run(item, device)`` on every item in parallel with dask; results in order.

    ``scheduler=None`` uses the local threaded scheduler with ``workers`` threads; otherwise
    it is a ``dask.distributed`` scheduler address (``tcp://host:port``).
    """
    import dask

    if scheduler is None:
        tasks = [dask.delayed(run, pure=False)(it, device) for it in items]
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr, minimum=1.0, dt=1.0):
                return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
        return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))

    from distributed import Client, as_completed

    with Client(scheduler, timeout="20s") as client:
        if all(isinstance(it, np.ndarray) for it in items):
            # in-memory frames: send each once instead of embedding them in the graph
            remote = client.scatter([np.asarray(it) for it in items])
            futures = client.map(run, remote, device=device, pure=False)
        else:
            # lazy frames: file-backed graphs (open vendor files) do not pickle, so this
            # process reads each item and submits it as soon as it is loaded
            futures = [client.submit(run, _materialize(it), device, pure=False)
                       for it in items]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(futures)
        done = 0
        for fut in as_completed(futures):
            results[index[fut.key]] = fut.result()
            done += 1
            if progress:
                print(f"\r[{tool_bar(done, len(futures))}] {done}/{len(futures)} frames",
                      end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        return results


def _materialize(item):
    """Numpy version of an item (dask arrays computed here with local threads)."""
    if isinstance(item, dict):
        return {k: _materialize(v) for k, v in item.items()}
    if hasattr(item, "dask"):
        return np.asarray(item.compute(scheduler="threads"))
    return np.asarray(item) if item is not None else None


def tool_bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / max(total, 1))
    return "#" * filled + " " * (width - filled)


def _write_outputs(tool: str, job: Job, results: list[dict], tmp: Path, prov: dict) -> list[Path]:
    """Write one job's results into ``tmp``; returns the file names written."""
    import pandas as pd
    import tifffile

    from napari_microml.io.writer import write_labels_tiff, write_points_csv

    kw = job.kwargs
    frame_scale = list(kw.get("scale", [1.0] * job.data.ndim))
    frame_trans = list(kw.get("translate", [0.0] * job.data.ndim))
    frame_units = list(kw.get("units", ["pixel"] * job.data.ndim))
    md = {"napari_microml": prov}
    written: list[Path] = []
    if tool == "atoms":
        pts, feats = [], []
        for i, r in enumerate(results):
            p = r["positions"]
            pts.append(np.column_stack([np.full(len(p), i), p]) if job.is_stack else p)
            feats.append(r["features"])
        d = 3 if job.is_stack else 2
        data = np.concatenate(pts) if pts else np.zeros((0, d))
        table = pd.concat(feats, ignore_index=True) if any(len(f.columns) for f in feats) \
            else pd.DataFrame()
        attrs = {"scale": frame_scale[-d:], "translate": frame_trans[-d:],
                 "units": frame_units[-d:], "features": table, "metadata": md,
                 "name": f"{job.stem} atoms"}
        written += [Path(x) for x in write_points_csv(str(tmp / f"{job.stem}_atoms.csv"),
                                                      data, attrs)]
    elif tool == "defects":
        labels = np.stack([r["labels"] for r in results]) if job.is_stack else results[0]["labels"]
        attrs = {"scale": frame_scale, "translate": frame_trans, "units": frame_units,
                 "metadata": md, "name": f"{job.stem} defects"}
        written += [Path(x) for x in write_labels_tiff(str(tmp / f"{job.stem}_defects.tif"),
                                                       labels, attrs)]
        tables = []
        for i, r in enumerate(results):
            t = r["table"].copy()
            if job.is_stack:
                t.insert(0, "frame", i)
            tables.append(t)
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        out = tmp / f"{job.stem}_defects.csv"
        table.to_csv(out, index=False)
        written.append(out)
    elif tool == "complete":
        for key in ("image", "uncertainty"):
            arr = np.stack([r[key] for r in results]) if job.is_stack else results[0][key]
            out = tmp / f"{job.stem}_completed_{key}.tif"
            tifffile.imwrite(out, arr.astype(np.float32), metadata=None,
                             description=json.dumps({"napari_microml": prov,
                                                     "scale": frame_scale,
                                                     "units": [str(u) for u in frame_units]}))
            written.append(out)
    elif tool == "spectra":
        r = results[0]
        shift = r["shift"].reshape(job.shape)
        out = tmp / f"{job.stem}_shift.tif"
        spatial = len(job.shape)
        tifffile.imwrite(out, shift.astype(np.float32), metadata=None,
                         description=json.dumps({"napari_microml": prov,
                                                 "scale": frame_scale[:spatial],
                                                 "units": [str(u) for u in frame_units[:spatial]]}))
        written.append(out)
        lat = r["latents"]
        cols = {f"latent_{j}": lat[:, j] for j in range(lat.shape[1])}
        idx = np.indices(job.shape).reshape(len(job.shape), -1)
        names = ["row", "col"] if spatial == 2 else ["index"]
        spectral = kw.get("metadata", {}).get("napari_microml", {}).get("spectral_axis")
        shift_col = f"shift_{spectral['units']}" if spectral else "shift_channels"
        table = pd.DataFrame({**dict(zip(names, idx)), shift_col: r["shift"], **cols})
        out = tmp / f"{job.stem}_spectra.csv"
        table.to_csv(out, index=False)
        written.append(out)
    return written


def run_tool(tool: str, inputs: list[str], out: str, *, device: str = "auto",
             scheduler: str | None = None, workers: int | None = None,
             progress: bool = True, model: str | None = None, rescale: str | None = None) -> list[Path]:
    """Validate ``inputs``, run ``tool`` on them and write results into ``out``.

    Returns the paths written. Raises :class:`InputError` for bad input (nothing written).
    """
    from napari_microml.runtime.provenance import make_provenance

    adapter = ADAPTERS[tool]
    run = adapter.run
    if model is not None:
        choices = model_choices(tool)
        if model not in choices:
            raise InputError(f"--model {model!r} is not a {tool} model; choose one of {', '.join(choices)}.")
        run = functools.partial(adapter.run, model=model)
    if rescale is not None:
        from napari_microml.runtime.spacing import RESCALE_MODES

        if not adapter.rescale:
            raise InputError(f"{tool} takes no --rescale (only the lattice tools do).")
        if rescale not in RESCALE_MODES:
            raise InputError(f"--rescale {rescale!r}: choose one of {', '.join(RESCALE_MODES)}.")
        run = functools.partial(run, rescale=rescale)
    files = collect_inputs(inputs)
    jobs = load_jobs(files, tool)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder.")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)

    items = [it for job in jobs for it in job.items]
    t0 = time.perf_counter()
    if progress:
        print(f"microml {tool}: {len(jobs)} input(s), {len(items)} "
              f"{'frame' if adapter.per == 'frame' else 'block'}(s)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".microml-partial-", dir=out_dir))
    try:
        results = process_items(items, run, device=device, scheduler=scheduler,
                                workers=workers, progress=progress)
        seconds = time.perf_counter() - t0
        staged: list[Path] = []
        k = 0
        for job in jobs:
            res = results[k:k + len(job.items)]
            k += len(job.items)
            tool_prov = next((r.get("provenance") for r in res if r.get("provenance")), None)
            prov = make_provenance(
                f"cli.{tool}",
                parameters={"frames": len(job.items), "scheduler": scheduler or "threads",
                            "workers": workers, "seconds_total": round(seconds, 3),
                            "tool_provenance": tool_prov},
                model=(tool_prov or {}).get("model") if isinstance(tool_prov, dict) else None,
                device=device, input_name=job.stem, input_file=job.source)
            staged += _write_outputs(tool, job, res, tmp, prov)
            pfile = tmp / f"{job.stem}_{tool}.provenance.json"
            pfile.write_text(json.dumps(prov, indent=1))
            staged.append(pfile)
        final = []
        for p in staged:  # move into place only when everything succeeded
            dest = out_dir / p.name
            os.replace(p, dest)
            final.append(dest)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()


# --------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    from napari_microml import __version__

    ap = argparse.ArgumentParser(prog="microml", description="napari-microml batch tools.")
    ap.add_argument("--version", action="version", version=f"napari-microml {__version__}")
    sub = ap.add_subparsers(dest="command")
    sub.add_parser("models", help="list shipped models with their sha256")
    for name, ad in ADAPTERS.items():
        sp = sub.add_parser(name, help=ad.help)
        sp.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or stacks")
        sp.add_argument("--out", required=True, help="output folder")
        sp.add_argument("--scheduler", default=None,
                        help="dask.distributed scheduler address (default: local threads)")
        sp.add_argument("--workers", type=int, default=None,
                        help="local threads (default: all cores)")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="where networks run (default auto)")
        sp.add_argument("--quiet", action="store_true", help="no progress output")
        if ad.task is not None:
            sp.add_argument("--model", default=None,
                            help="shipped model name (see `microml models`; complete also takes "
                                 "'local-gp', kriging without a network); default: default, except "
                                 "defects: auto ('dichalcogenide' for honeycombs of two unequally bright "
                                 "sublattices, else 'default')")
        if ad.rescale:
            from napari_microml.atoms.finder import NOISY_PERIOD
            from napari_microml.runtime.spacing import RESCALE_MODES, TARGET

            sp.add_argument("--rescale", default=None, choices=list(RESCALE_MODES),
                            help="resample each frame's lattice for the network: auto (default) "
                                 f"outside the trained range (atoms: also noisy lattices above {NOISY_PERIOD:g} px), "
                                 f"always to a {TARGET:g} px period, off never")
    return ap


def _models() -> int:
    from napari_microml.nets.registry import list_models

    models = list_models()
    if not models:
        print("No shipped models.")
        return 0
    for name, entry in sorted(models.items()):
        print(f"{name}\t{entry.get('task', '?')}\t{entry.get('file', '?')}\t"
              f"sha256:{entry.get('sha256', '?')}")
    return 0


def _exit_cleanly_on_sigterm():
    """Turn SIGTERM (``kill``, job schedulers, ``timeout``) into KeyboardInterrupt so the
    temporary folder is removed and nothing half-written stays in ``--out``."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not allowed here (embedded interpreters)
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``microml`` console script; returns the exit code."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help(sys.stderr)
        return 2
    if args.command == "models":
        return _models()
    if args.workers is not None and args.workers < 1:
        print("microml: error: --workers must be at least 1.", file=sys.stderr)
        return 2
    previous = _exit_cleanly_on_sigterm()
    try:
        written = run_tool(args.command, args.inputs, args.out, device=args.device,
                           scheduler=args.scheduler, workers=args.workers,
                           progress=not args.quiet, model=getattr(args, "model", None),
                           rescale=getattr(args, "rescale", None))
    except KeyboardInterrupt:
        print(f"microml: {args.command} interrupted; nothing was written.", file=sys.stderr)
        return 130
    except InputError as err:
        print(f"microml: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - one line for the user, nothing written
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"microml: {args.command} failed: {type(err).__name__}: {msg}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
    if not args.quiet:
        print(f"microml {args.command}: wrote {len(written)} file(s) to {args.out}",
              file=sys.stderr)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
