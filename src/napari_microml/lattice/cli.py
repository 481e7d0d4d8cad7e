"""``microml lattice``: sublattices, strain, polarisation and atom counts for a batch of images.

::

    microml lattice image.emd more/ --out results/              # columns found by find_atoms
    microml lattice abf.hspy --pixel-size 0.00933 --out results/ # dark columns: found as such
    microml lattice image.tif --positions image_atoms.csv --out results/

For each 2D image ``<name>`` it writes ``<name>_lattice.csv`` (one row per column: positions in
px and physical units, sublattice, exx, eyy, exy, rotation, displacement, their 1σ, count and
cross-section), its ``.csv.json`` sidecar, and ``<name>_lattice.json`` (lattice parameters, the
atom-count mixture, provenance). The images are analysed in parallel threads (``--workers``,
``cli.process_items``) and the results go into ``--out`` the way every ``microml`` command
writes them (``cli.check_out`` + ``cli.Staging``): existing files are never replaced without
``--overwrite``, and nothing is moved into place unless every input succeeded (with
``--keep-going``: the inputs that succeeded, exit 3).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

OUTPUTS = ("_lattice.csv", "_lattice.csv.json", "_lattice.json")


def add_parser(subparsers) -> None:
    """Add the ``lattice`` subcommand to ``microml``'s subparsers."""
    from napari_microml.cli import EXIT_CODES
    from napari_microml.runtime.contrast import CONTRASTS
    from napari_microml.runtime.device import CHOICES as DEVICES

    what = (
        "sublattices, strain, polarisation and atom counts "
        "→ <name>_lattice.csv (+ .csv.json sidecar) + <name>_lattice.json"
    )
    sp = subparsers.add_parser(
        "lattice",
        help=what,
        description=what,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("inputs", nargs="+", metavar="INPUT", help="2D images (files or folders)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument(
        "--positions",
        default=None,
        help="a points CSV (microml atoms output) for a single input; default: find "
        "the columns with the atom finder",
    )
    sp.add_argument(
        "--contrast",
        default="auto",
        choices=CONTRASTS,
        help="bright: HAADF (sublattice 0 = brightest, atoms counted); dark: ABF/BF "
        "(sublattice 0 = darkest, no counting); auto (default): decided per image",
    )
    sp.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        help="nm per pixel when the file has no calibration (lattice parameters in pm)",
    )
    sp.add_argument(
        "--shells",
        default="auto",
        choices=["auto", "1", "2"],
        help="strain fit over 3×3 (1) or 5×5 (2) cells; auto (default): 5×5 when the "
        "3×3 fit's median strain std is above 0.3 %%",
    )
    sp.add_argument("--no-count", action="store_true", help="skip atom counting")
    sp.add_argument(
        "--device",
        default="auto",
        choices=list(DEVICES),
        help="where the atom finder runs (default auto)",
    )
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace result files of the same names already in --out (default: refuse, "
        "exit 2, naming them)",
    )
    sp.add_argument(
        "--keep-going",
        action="store_true",
        help="when some inputs fail, still write the others' results (exit 3, the failed "
        "inputs named on stderr); default: all or nothing",
    )
    sp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="images analysed at once in local threads (default: all cores)",
    )
    sp.add_argument("--quiet", action="store_true", help="no progress output")


def _pixel_size(kwargs: dict, given: float | None) -> float | None:
    """nm per pixel: ``--pixel-size``, else the file's calibration when its units are lengths."""
    from napari_microml.runtime.units import nm_per_pixel

    if given is not None:
        return given
    return nm_per_pixel(scale=kwargs.get("scale"), units=kwargs.get("units"))


def _sentence(err: Exception) -> str:
    """The error on one line, without its full stop (a clause follows it)."""
    from napari_microml.cli import _one_line

    return _one_line(err).rstrip(".")


def analyse_file(path: Path, args) -> dict:
    """Results of one image: the lattice, the counts, and what the CSV needs."""
    import napari_microml as mm
    from napari_microml.atoms.finder import find_atoms_iter
    from napari_microml.cli import InputError, _drain, report_step
    from napari_microml.io.reader import read_file
    from napari_microml.io.writer import read_points_csv
    from napari_microml.runtime.level import scan_kind

    data, kwargs, _ = read_file(path)[0]
    image = np.asarray(data, np.float64)
    if image.ndim != 2:
        raise InputError(
            f"{path.name} is not one 2D image (shape {image.shape}); the lattice "
            "analysis takes one frame at a time."
        )
    contrast = args.contrast
    if args.positions:
        pts, pkw, _ = read_points_csv(args.positions)
        positions = np.asarray(pts, float)[:, -2:]
        feats = pkw.get("features")
        std = (
            feats["position_std"].to_numpy(float)
            if feats is not None and "position_std" in feats
            else None
        )
    else:
        found = _drain(
            find_atoms_iter(
                image,
                **({} if contrast == "auto" else {"contrast": contrast}),
                device=args.device,
                scan=scan_kind(kwargs.get("metadata")),
            )
        )
        positions, std = found.positions, found.features["position_std"].to_numpy(float)
        contrast = found.parameters.get("contrast", contrast)
    if contrast not in ("bright", "dark"):
        from napari_microml.lattice.analyze import columns_are_dark

        contrast = "dark" if columns_are_dark(image, positions) else "bright"
    signal = -image if contrast == "dark" else image
    pixel_size = _pixel_size(kwargs, args.pixel_size)
    report_step(0, 1, f"fitting the lattice to {len(positions)} columns")
    lat = mm.analyze_lattice(
        positions,
        image=signal,
        pixel_size=pixel_size,
        position_std=std,
        shells=args.shells if args.shells == "auto" else int(args.shells),
    )
    counts = None
    if not args.no_count and contrast == "bright":
        report_step(0, 1, "counting atoms")
        counts = mm.count_atoms(
            image, positions, sublattice=lat.sublattice if lat.n_sublattices > 1 else None
        )
    return {
        "lattice": lat,
        "counts": counts,
        "kwargs": kwargs,
        "pixel_size": pixel_size,
        "contrast": contrast,
    }


def _write(stem: str, res: dict, tmp: Path, source: Path) -> list[Path]:
    from napari_microml.io.writer import write_points_csv
    from napari_microml.lattice.analyze import column_units
    from napari_microml.runtime.provenance import KEY, make_provenance

    lat, cnt, kw = res["lattice"], res["counts"], res["kwargs"]
    table = lat.table()
    if cnt is not None:
        table["count"] = cnt.counts
        table["cross_section"] = cnt.cross_section
    prov = make_provenance(
        "cli.lattice",
        parameters={"lattice": lat.provenance, "counting": cnt.provenance if cnt else None},
        input_name=stem,
        input_file=source,
    )
    csv = tmp / f"{stem}_lattice.csv"
    write_points_csv(
        str(csv),
        table[["row", "col"]].to_numpy(),
        {
            "scale": kw.get("scale"),
            "translate": kw.get("translate"),
            "units": kw.get("units"),
            "features": table.drop(columns=["row", "col"]),
            "metadata": {KEY: prov},
            "name": stem,
            "column_units": column_units(table.columns),
        },
    )
    summary = {
        "lattice_parameters": lat.lattice,
        "cell_px": lat.cell.tolist(),
        "n_sublattices": lat.n_sublattices,
        "columns_per_sublattice": np.bincount(lat.sublattice).tolist(),
        "pixel_size_nm": res["pixel_size"],
        "position_std": lat.std_source,
        "strain_fit": {
            "cells": "5×5" if lat.parameters["shells"] == 2 else "3×3",
            "requested": lat.parameters["shells_requested"],
            "reason": lat.parameters["shells_reason"],
        },
        "contrast": res["contrast"],
        "column_units": column_units(table.columns),
        "counting": None
        if cnt is None
        else {
            str(lab): {
                "n_components": len(m.means),
                "means": m.means.tolist(),
                "weights": m.weights.tolist(),
                "sigma": m.sigma,
                "icl": m.icl.tolist(),
            }
            for lab, m in (cnt.groups or {"all": cnt.mixture}).items()
        },
        KEY: prov,
    }
    js = tmp / f"{stem}_lattice.json"
    js.write_text(json.dumps(summary, indent=1, default=float))
    return [csv, Path(str(csv) + ".json"), js]


def _analyse(path: Path, device: str, *, args) -> dict:
    return analyse_file(path, args)


def run(args) -> int:
    """Run ``microml lattice``; returns the exit code (``cli.EXIT_CODES``). Ctrl-C propagates
    (as KeyboardInterrupt) to ``cli.main``, which reports it, once the staging folder is gone."""
    from napari_microml.cli import (
        EXIT_FAILED,
        EXIT_USAGE,
        Failure,
        InputError,
        Report,
        Staging,
        ToolError,
        _guarded,
        _one_line,
        _plural,
        _uninterrupted,
        check_out,
        collect_inputs,
        process_items,
    )

    report = Report()
    failures = report.failed if args.keep_going else None
    try:
        if args.workers is not None and args.workers < 1:
            raise InputError("--workers must be at least 1.")
        files = [p for p, _ in collect_inputs(args.inputs, failures)]
        if args.positions and len(files) + len(report.failed) != 1:
            raise InputError("--positions gives the columns of one image; pass exactly one input.")
        if args.positions and not Path(args.positions).is_file():
            raise InputError(f"--positions {args.positions}: no such file.")
        if args.pixel_size is not None and not args.pixel_size > 0:
            raise InputError("--pixel-size must be a positive number of nm per pixel.")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} exists and is not a folder.")
        planned = {p: [p.stem + suffix for suffix in OUTPUTS] for p in files}
        names = [n for per in planned.values() for n in per]
        if len(set(names)) != len(names):
            raise InputError("Two inputs have the same name; their results would collide in --out.")
        replace = check_out(out, names, args.overwrite)
    except InputError as err:
        print(f"microml: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    report.inputs = len(files) + len(report.failed)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = None
    try:
        with _uninterrupted():
            stage = Staging(out)
        results = process_items(
            files,
            functools.partial(_guarded, functools.partial(_analyse, args=args)),
            device=args.device,
            workers=args.workers,
            progress=not args.quiet,
            labels=[p.name for p in files],
            doing="lattice analysis",
        )
        done: list[str] = []
        for path, res in zip(files, results, strict=True):
            if isinstance(res, Failure):
                if not args.keep_going:
                    named = res.reason if res.reason.startswith(path.name) else None
                    raise (InputError if res.bad_input else ToolError)(
                        named or f"{path.name}: {res.reason}"
                    )
                res.name = path.name
                report.failed.append(res)
                continue
            try:
                _write(path.stem, res, stage.new, path)
            except Exception as err:  # noqa: BLE001 - the input's results are dropped
                if not args.keep_going:
                    raise ToolError(f"{path.name}: writing the results failed: {err}") from err
                for name in planned[path]:
                    (stage.new / name).unlink(missing_ok=True)
                report.failed.append(Failure(path.name, _one_line(err), bad_input=False))
                continue
            done += planned[path]
        if done:
            with _uninterrupted(drop=True):
                report.written = stage.commit(done, replace)
    except InputError as err:
        print(f"microml: error: {_sentence(err)}; nothing was written.", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - one line for the user, nothing written
        kind = "" if isinstance(err, ToolError) else f"{type(err).__name__}: "
        print(
            f"microml: lattice failed: {kind}{_sentence(err)}; nothing was written.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        with _uninterrupted(drop=bool(report.written)):
            if stage is not None:
                stage.close()
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
    for f in report.failed:
        kind = "error: " if f.bad_input else "failed: "
        print(f"microml: lattice: {f.name}: {kind}{f.reason}", file=sys.stderr)
    if not args.quiet or report.failed:
        gave = report.inputs - len(report.failed)
        print(
            f"microml lattice: wrote {_plural(len(report.written), 'file')} to {out} "
            f"({gave} of {_plural(report.inputs, 'input')} gave results)",
            file=sys.stderr,
        )
    for p in report.written:
        print(p)
    return report.exit_code
