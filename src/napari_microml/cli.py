"""``microml``: batch runs of the napari-microml tools over files, folders and stacks.

Examples
--------
::

    microml --version
    microml models
    microml atoms stack.tif more/ --out results/ --workers 4
    microml atoms abf.hspy --out results/ --contrast dark
    microml defects image.dm4 --out results/ --scheduler tcp://127.0.0.1:8786
    microml spectra si.hspy --out results/
    microml complete sparse.tif --out filled/ --mask scan_mask.tif --model local-gp
    microml complete movie.mrc --coords movie_scan_coordinates.csv --out filled/
    microml lattice image.emd --out lattice/

Each input file is read with :func:`napari_microml.io.reader.read_file`; files found in a
folder that an earlier run wrote (napari-microml result TIFFs) are skipped, so ``--out`` may
lie inside (or be) the input folder. Frames of every stack are processed in parallel with
``dask.delayed`` (local threads by default, or a ``dask.distributed`` cluster with
``--scheduler``). All inputs are read and checked, and the result names checked against
``--out``, before anything runs: existing files are never replaced without ``--overwrite``.

Results are written into a hidden staging folder inside ``--out`` (``.microml-partial-*``)
and renamed into place only when every input succeeded (or, with ``--keep-going``, for the
inputs that succeeded). The renames are journalled: any failure while moving (a name taken by
a folder, a full disk, Ctrl-C) restores ``--out`` exactly as it was, and a staging folder left
by a killed run (SIGKILL, power cut of the process) is rolled back and removed by the next
run into the same ``--out``.

``complete`` never guesses which pixels were measured: NaN pixels are unmeasured, or pass
``--mask FILE`` (non-zero = measured), ``--coords FILE`` (scan positions) or
``--zeros-unmeasured``. ``spectra`` needs a spectral axis (energy, wavelength) in the file, or
``--channels-last`` for a plain array of spectra.

Every result has a ``<name>_<tool>.provenance.json`` sidecar (tool, package version, command
line, options, model and its sha256, input file and its sha256); the result files carry the
same record (CSV sidecar / header lines, TIFF description).

Exit codes
----------
::

    0    success: every input was processed and its results written
    1    a tool failed (an error inside the computation, not in the input); nothing written
    2    bad input or usage: an input that cannot be read or does not suit the tool, a wrong
         option, or result files that already exist (pass --overwrite); nothing written
    3    partial: results were written for the good inputs only; each input named on stderr
         gave none (it failed under --keep-going, or no atomic column was found in it)
    130  interrupted (Ctrl-C or SIGTERM): nothing of the run is left in --out
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

# Ctrl-C while the modules below load (numpy, then torch) exits quietly instead of printing an
# import traceback; main() takes over with its own handler once it runs.
_CONSOLE = __name__ == "__main__" or Path((getattr(sys, "argv", None) or [""])[0]).name in (
    "microml",
    "microml.exe",
)


def _exit_interrupted(signum=None, frame=None):
    try:
        sys.stderr.write("microml: interrupted; nothing was written.\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


if _CONSOLE:
    signal.signal(signal.SIGINT, _exit_interrupted)
    signal.signal(signal.SIGTERM, _exit_interrupted)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = (
    __doc__[__doc__.index("Exit codes") :].replace("----------\n::\n\n", "")
    if __doc__
    else "Exit codes: 0 success, 1 tool failed, 2 bad input or usage, 3 partial, 130 interrupted"
)
STAGING_PREFIX = ".microml-partial-"


class InputError(ValueError):
    """Bad input or usage: reported as one line on stderr with exit code 2."""


class ToolError(RuntimeError):
    """A tool failed inside its computation: exit code 1."""


# --------------------------------------------------------------------------- progress
_ITEM = threading.local()  # the progress reporter of the item this worker thread is running


def _drain(gen):
    """Run a core's generator twin (``find_atoms_iter`` …) to its result, passing its progress
    messages to the run's progress line when this thread runs an item of a CLI run."""
    from napari_microml.runtime.workers import Loss, Progress, as_message

    while True:
        try:
            raw = next(gen)
        except StopIteration as stop:
            return stop.value
        msg = as_message(raw)
        if isinstance(msg, Progress):
            report_step(msg.done, msg.total, msg.text)
        elif isinstance(msg, Loss):
            report_step(msg.step, msg.total, msg.text)


def report_step(done: int, total: int, text: str) -> None:
    """Tell the run's progress line what the item this thread runs is doing (a no-op outside
    a CLI run)."""
    report = getattr(_ITEM, "report", None)
    if report is not None:
        report(done, total, text)


class ProgressLine:
    """One stderr line, redrawn every ``dt`` s once a run has lasted ``minimum`` s: items done,
    the seconds so far and the last step a running item's core reported (tile, fit, epoch), so
    a single frame shows what it is doing instead of 0 % until it ends."""

    def __init__(
        self, labels: list[str], doing: str = "", *, minimum: float = 1.0, dt: float = 1.0, out=None
    ):
        self.labels, self.doing = labels, doing
        self.minimum, self.dt = minimum, dt
        self.out = sys.stderr if out is None else out
        self.finished = 0
        self.steps: dict[int, tuple[int, int, str]] = {}  # running item -> its core's last step
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self._width = 0
        self.drawn = False

    def reporter(self, index: int) -> Callable[[int, int, str], None]:
        """The callback for item ``index``'s core: ``(done, total, text)`` of its current step."""
        return functools.partial(self._step, index)

    def _step(self, index: int, done: int, total: int, text: str) -> None:
        with self._lock:
            self.steps[index] = (done, total, re.sub(r"^frame 1/1[:,] ", "", text))

    def item_done(self, index: int) -> None:
        with self._lock:
            self.finished += 1
            self.steps.pop(index, None)

    def line(self) -> str:
        """The text of the line now."""
        with self._lock:
            n, finished, steps = len(self.labels), self.finished, dict(self.steps)
        seconds = f"{time.perf_counter() - self._t0:.0f} s"
        running = max(steps) if steps else None
        what = ""
        if running is not None:
            done, total, text = steps[running]
            what = ": ".join(x for x in (self.doing, text or f"{done}/{total}") if x)
        elif finished < n:
            what = f"{self.doing}…" if self.doing else ""
        else:
            what = "done"
        if n == 1:  # the bar follows the core's current step (tiles, fits, epochs)
            done, total, _ = steps.get(0, (0, 0, ""))
            frac = 1.0 if finished else done / total if total else 0.0
            head = f"[{tool_bar(round(1000 * frac), 1000)}] {self.labels[0]}"
            return f"{head}: {what} | {seconds}" if what else f"{head} | {seconds}"
        head = f"[{tool_bar(finished, n)}] {finished}/{n} | {seconds}"
        if running is None or finished == n:
            return head
        return f"{head} | {self.labels[running]}: {what}"

    def draw(self) -> None:
        text = self.line()
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        print("\r" + text + " " * pad, end="", file=self.out, flush=True)
        self.drawn = True

    def _loop(self) -> None:
        if self._stop.wait(self.minimum):
            return
        while True:
            self.draw()
            if self._stop.wait(self.dt):
                return

    def __enter__(self) -> ProgressLine:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="microml-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.drawn:
            if exc_type is None:
                self.draw()
            print(file=self.out, flush=True)


def _reporting(run: Callable, item, device: str, *, line: ProgressLine, index: int):
    """``run(item, device)`` in a worker thread, its core's progress going to ``line``."""
    _ITEM.report = line.reporter(index)
    try:
        return run(item, device)
    finally:
        _ITEM.report = None
        line.item_done(index)


# --------------------------------------------------------------------------- adapters
# Each adapter takes one item (a 2D frame, a {values, mask} scan, or an (N, L) spectra block)
# and returns a dict of plain numpy / pandas results, so it pickles to dask.distributed workers.
def _atoms(
    frame: np.ndarray,
    device: str = "auto",
    model: str = "auto",
    rescale: str = "auto",
    contrast: str = "auto",
    pixel_size: float | None = None,
    scan: str = "auto",
) -> dict:
    from napari_microml.atoms.finder import find_atoms_iter

    r = _drain(
        find_atoms_iter(
            frame,
            device=device,
            model=model,
            rescale=rescale,
            contrast=contrast,
            pixel_size=pixel_size,
            scan=scan,
        )
    )
    return {
        "positions": np.asarray(r.positions, float).reshape(-1, 2),
        "features": _frame_table(r.features),
        "provenance": getattr(r, "provenance", None),
        "pixel_size": pixel_size,
    }


def _defects(
    frame: np.ndarray,
    device: str = "auto",
    model: str = "auto",
    rescale: str = "auto",
    pixel_size: float | None = None,
) -> dict:
    from napari_microml.defects.segment import segment_defects_iter

    d = _drain(
        segment_defects_iter(
            frame, device=device, model=model, rescale=rescale, pixel_size=pixel_size
        )
    )
    return {
        "pixel_size": d.pixel_size,
        "labels": np.asarray(d.labels, np.int32),
        "table": _frame_table(d.table),
        "counts": d.counts(),
        "area_nm2": d.image_area_nm2,
        "provenance": getattr(d, "provenance", None),
    }


def _complete(item: dict, device: str = "auto", model: str | None = None) -> dict:
    """``item = {"values": (H, W), "mask": (H, W) bool}`` (mask True = measured)."""
    from napari_microml.completion.complete import complete_scan_iter

    kwargs: dict[str, Any] = {} if model is None else {"model": model}  # None: the default
    c = _drain(
        complete_scan_iter(
            np.asarray(item["values"]), np.asarray(item["mask"], bool), device=device, **kwargs
        )
    )
    return {
        "image": np.asarray(c.image),
        "uncertainty": np.asarray(c.uncertainty),
        "provenance": getattr(c, "provenance", None),
    }


def _spectra(item: dict, device: str = "auto") -> dict:
    """``item = {"spectra": (N, L), "axis": (L,) energy values or None, "channel_range":
    (start, stop) or None, "units": axis units, "shape": the maps' shape, "name": for notes,
    "signal_type": the file's ("EDS_TEM": X-ray lines, no edges)}``.

    Without a channel range the window is chosen as the widget does (a peak, or the strongest
    core-loss edge); when nothing stands out the input is refused (exit 2). The window used and
    any sign of an implausible shift map come back as ``notes`` (printed on stderr)."""
    from napari_microml.spectra.preprocess import auto_window, implausible_shift, size_caveats
    from napari_microml.spectra.shift_vae import fit_shift_vae_iter

    spectra = np.asarray(item["spectra"])
    axis, units = item.get("axis"), item.get("units", "")
    signal_type = str(item.get("signal_type") or "")
    span, how = item.get("channel_range"), "typed (--window)"
    if span is None:  # as the widget: the most prominent peak, or the strongest core-loss edge
        choice = auto_window(spectra, axis, units=units, signal_type=signal_type)
        if not choice.found:
            raise ValueError(
                "no peak or edge stands out in the mean spectrum, so there is no feature "
                "whose shift could be measured; choose a window with --window LO HI (for an "
                "edge: 20 eV below its onset to 60 eV above)"
            )
        span, how = (choice.start, choice.stop), choice.describe(units)
    v = _drain(fit_shift_vae_iter(spectra, axis=axis, channel_range=span, device=device))
    lo, hi = float(v.axis[0]), float(v.axis[-1])
    shift = np.asarray(v.shift).reshape(item.get("shape") or (-1,))
    warning = implausible_shift(shift, window=(lo, hi), units=units, signal_type=signal_type)
    name = f"{item['name']}: " if item.get("name") else ""
    notes = [f"{name}window {lo:.4g}–{hi:.4g} {units} ({how})"]
    notes += [f"{name}{warning}"] if warning else []
    caveat = size_caveats(spectra[..., span[0] : span[1]])
    notes += [f"{name}{caveat}"] if caveat else []
    prov = getattr(v, "provenance", None)
    if isinstance(prov, dict):
        prov = {**prov, "window_reason": how, "warning": warning}
    latents = np.asarray(v.latents, np.float32)
    return {
        "shift": np.asarray(v.shift, np.float32).reshape(-1),
        "latents": latents.reshape(len(spectra), -1),
        "provenance": prov,
        "notes": notes,
    }


def _frame_table(table):
    import pandas as pd

    if table is None:
        return pd.DataFrame()
    return (
        table.reset_index(drop=True)
        if isinstance(table, pd.DataFrame)
        else pd.DataFrame({k: np.asarray(v) for k, v in dict(table).items()})
    )


@dataclass
class Adapter:
    """One tool as the CLI sees it: ``run(item, device) -> dict`` and how items are cut."""

    run: Callable[..., dict]
    per: str  # "frame": 2D frames of images/stacks; "spectra": one (N, L) block per input
    help: str
    outputs: tuple  # result file suffixes after the input's stem (the provenance sidecar last)
    task: str | None = None  # the model registry's task when the tool takes --model
    rescale: bool = False  # the tool takes --rescale (lattice tools: runtime/spacing.py)
    doing: str = ""  # what the progress line says a running item is doing


def model_choices(tool: str) -> list[str]:
    """Names ``--model`` accepts for ``tool`` (shipped weights, plus the kriging methods for
    complete and 'auto' for defects)."""
    from napari_microml.nets.registry import list_models

    task = ADAPTERS[tool].task
    if task is None:
        return []
    names = sorted(n.removeprefix(f"{task}-") for n in list_models(task))
    if tool == "defects":  # picks 'dichalcogenide' or 'default' per input (defects/material.py)
        names.insert(0, "auto")
    if tool == "atoms" and {"default", "pt-single-atoms"} <= set(names):  # atoms/choose.py
        names.insert(0, "auto")
    if tool == "complete":
        from napari_microml.completion.complete import KRIGING, LOCAL_GP

        names = [KRIGING, LOCAL_GP, *names]
    return names


ADAPTERS: dict[str, Adapter] = {
    "atoms": Adapter(
        _atoms,
        "frame",
        "find atomic columns → <name>_atoms.csv (+ .csv.json sidecar)",
        ("_atoms.csv", "_atoms.csv.json", "_atoms.provenance.json"),
        "atoms",
        rescale=True,
        doing="finding atomic columns",
    ),
    "defects": Adapter(
        _defects,
        "frame",
        "segment defects → <name>_defects.tif (labels) + <name>_defects.csv (table)",
        ("_defects.tif", "_defects.csv", "_defects.provenance.json"),
        "defects",
        rescale=True,
        doing="segmenting defects",
    ),
    "complete": Adapter(
        _complete,
        "frame",
        "complete partial scans → <name>_complete_image.tif + <name>_complete_uncertainty.tif",
        ("_complete_image.tif", "_complete_uncertainty.tif", "_complete.provenance.json"),
        "completion",
        doing="completing the scan",
    ),
    "spectra": Adapter(
        _spectra,
        "spectra",
        "shift-VAE on a spectrum image or line scan → <name>_spectra_shift.tif + "
        "<name>_spectra.csv (shift and latents)",
        ("_spectra_shift.tif", "_spectra.csv", "_spectra.provenance.json"),
        doing="fitting the shift-VAE",
    ),
}


def output_names(tool: str, stem: str) -> list[str]:
    """The files ``tool`` writes for an input called ``stem``, fixed before anything runs."""
    return [stem + suffix for suffix in ADAPTERS[tool].outputs]


# ------------------------------------------------------------------------------ inputs
@dataclass
class Job:
    """One image (or spectrum image) from one input file."""

    source: Path
    stem: str
    data: Any  # numpy or dask array
    kwargs: dict  # reader kwargs (scale, units, metadata ...)
    items: list  # per-item arrays handed to the adapter
    is_stack: bool
    shape: tuple  # spatial shape for spectra (H, W) maps


@dataclass
class Failure:
    """An input that gave no result: its name, why, and whether the input itself was at fault."""

    name: str
    reason: str
    bad_input: bool = True


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _supported_in(folder: Path, skipped: list[str]) -> list[Path]:
    from napari_microml.io.reader import get_reader
    from napari_microml.io.writer import is_microml_output

    found = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or get_reader(str(p)) is None:
            continue
        if is_microml_output(p):  # an earlier run's result, e.g. --out inside the input folder
            skipped.append(f"{p.name}: written by microml (an earlier result), not an input")
            continue
        found.append(p)
    return found


def collect_inputs(
    inputs: list[str], failures: list[Failure] | None = None, skipped: list[str] | None = None
) -> list[tuple[Path, bool]]:
    """Expand folders (non-recursive) and check every file exists and is supported.

    Returns ``(path, from_folder)`` pairs. With a ``failures`` list, a bad input is recorded
    there and the others go on (``--keep-going``); without, the first raises InputError. Files
    in folders that microml wrote itself are left out (noted in ``skipped``).
    """
    from napari_microml.io.reader import FORMATS, get_reader

    skipped = [] if skipped is None else skipped
    files: list[tuple[Path, bool]] = []
    for raw in inputs:
        p = Path(raw)
        try:
            if p.is_dir():
                found = _supported_in(p, skipped)
                if not found:
                    raise InputError(
                        f"folder {p} contains no readable images ({', '.join(sorted(FORMATS))})."
                    )
                files.extend((f, True) for f in found)
            elif not p.exists():
                raise InputError(f"{p} does not exist.")
            elif p.suffix.lower() not in FORMATS:
                raise InputError(
                    f"{p.name}: '{p.suffix or 'no extension'}' files are not supported "
                    f"(supported: {', '.join(sorted(FORMATS))})."
                )
            elif get_reader(str(p)) is None and p.suffix.lower() == ".csv":
                raise InputError(
                    f"{p.name}: a CSV input is a sparse scan whose header names the columns x, "
                    "y (scan pixels) and the measured value, e.g. 'x,y,counts'; this one "
                    "does not."
                )
            elif get_reader(str(p)) is None:
                raise InputError(f"{p.name} is not a file this reader understands.")
            else:
                files.append((p, False))
        except InputError as err:
            if failures is None:
                raise
            failures.append(Failure(str(p), str(err)))
    return files


def _spectral_axis(kwargs: dict):
    return kwargs.get("metadata", {}).get("napari_microml", {}).get("spectral_axis")


def _unsuitable(
    name: str, data, kwargs: dict, tool: str, channels_last: bool = False
) -> str | None:
    """Why a layer cannot go to ``tool`` (one sentence), or None when it can."""
    per = ADAPTERS[tool].per
    spectral = _spectral_axis(kwargs)
    if kwargs.get("rgb"):
        return f"{name} is an RGB colour picture; {tool} needs grey images."
    if np.dtype(data.dtype).kind not in "biuf":
        return f"{name} holds {data.dtype} values, not numbers."
    if per == "frame":
        if spectral is not None:
            return (
                f"{name} is a spectrum image (last axis {spectral['name']!r}); "
                "use 'microml spectra' for it."
            )
        if data.ndim not in (2, 3):
            return (
                f"{name} has {data.ndim}D data {tuple(data.shape)}; "
                f"{tool} takes 2D images or 3D stacks (frames, H, W)."
            )
        if min(data.shape[-2:]) < 8:
            return (
                f"{name}: frames of {data.shape[-2]}×{data.shape[-1]} pixels are too "
                "small (at least 8×8)."
            )
        return None
    if spectral is None and not channels_last:
        units = ", ".join(str(u) for u in kwargs.get("units", ()) or ()) or "none given"
        return (
            f"{name} has no spectral axis (shape {tuple(data.shape)}, axis units: {units}): it "
            "reads as an image, not spectra. spectra needs a spectrum image or line scan whose "
            "last axis is energy or wavelength (EELS/EDS .dm3/.dm4/.hspy/.emd); for a plain "
            "array of spectra along its last axis pass --channels-last."
        )
    if data.ndim not in (2, 3):
        return (
            f"{name} has {data.ndim}D data {tuple(data.shape)}; "
            "spectra takes (N, L) spectra or (H, W, L) spectrum images."
        )
    if data.shape[-1] < 8:
        return f"{name} has only {data.shape[-1]} channels per spectrum (at least 8)."
    return None


@dataclass
class ScanMask:
    """How ``complete`` learns which pixels were measured (one of them, else NaN = unmeasured)."""

    mask: str | None = None  # file: non-zero = measured
    coords: str | None = None  # scan positions file (x, y per line by default)
    coords_order: str = "xy"
    scan_info: str | None = None  # Direct Electron *_info.txt (scan size, ROI offset)
    zeros_unmeasured: bool = False

    def describe(self) -> str:
        if self.mask:
            return f"mask file {Path(self.mask).name}"
        if self.coords:
            return f"scan positions {Path(self.coords).name}"
        return "pixels equal to 0" if self.zeros_unmeasured else "NaN pixels"


def _load_mask_file(path: str) -> np.ndarray:
    from napari_microml.io.reader import read_file

    try:
        layers = read_file(path)
    except ValueError as err:
        raise InputError(f"--mask: {err}") from err
    m = np.asarray(layers[0][0])
    if m.dtype.kind not in "biuf":
        raise InputError(
            f"--mask {Path(path).name} holds {m.dtype} values; a mask is numbers "
            "(non-zero = measured)."
        )
    from napari_microml.completion.scan_io import weights_sentence

    note = weights_sentence(m, name=f"--mask {Path(path).name}")
    if note:  # weights or a blurred trace, not measured / unmeasured
        print(f"microml complete: {note}", file=sys.stderr)
    return np.isfinite(m) & (m != 0) if m.dtype.kind == "f" else m != 0


def _scan_items(name: str, data, how: ScanMask, cache: dict) -> tuple[list[dict], bool]:
    """``{values, mask}`` per frame of a partial scan, from the way the user named the mask,
    and whether the result is a stack (a movie of a sparse scan gives one image)."""
    from napari_microml.completion import scan_io

    if how.coords:
        if "coords" not in cache:
            try:
                cache["coords"] = scan_io.read_scan_csv(how.coords, order=how.coords_order)
                cache["info"] = (
                    scan_io.read_scan_info(how.scan_info)
                    if how.scan_info
                    else {"scan_shape": None, "roi_offset": (0, 0)}
                )
            except ValueError as err:
                raise InputError(str(err)) from err
        coords, info = cache["coords"], cache["info"]
        try:
            if data.ndim == 3 and len(data) == len(coords):  # a movie: one frame per position
                values, mask = scan_io.rasterise(
                    coords,
                    scan_io.values_from_movie(data),
                    info["scan_shape"],
                    origin=info["roi_offset"],
                )
                return [{"values": values, "mask": mask}], False
            frames = [np.asarray(data)] if data.ndim == 2 else [np.asarray(f) for f in data]
            _, mask = scan_io.rasterise(
                coords, np.ones(len(coords)), frames[0].shape, origin=info["roi_offset"]
            )
        except ValueError as err:
            raise InputError(f"{name} with --coords {Path(how.coords).name}: {err}") from err
        return [{"values": f, "mask": mask} for f in frames], data.ndim == 3
    frames = [np.asarray(data)] if data.ndim == 2 else [np.asarray(f) for f in data]
    if how.mask:
        if "mask" not in cache:
            cache["mask"] = _load_mask_file(how.mask)
        m = cache["mask"]
        shape = frames[0].shape
        if m.shape != shape and m.shape != (len(frames), *shape):
            raise InputError(
                f"--mask {Path(how.mask).name} is {m.shape[-2]}×{m.shape[-1]} pixels but "
                f"{name} is {shape[0]}×{shape[1]}; the mask must match the scan."
            )
        masks = [m] * len(frames) if m.ndim == 2 else list(m)
    elif how.zeros_unmeasured:
        masks = [np.isfinite(f) & (f != 0) for f in frames]
    else:
        masks = [np.isfinite(f) for f in frames]
        if all(m.all() for m in masks):
            raise InputError(
                f"{name} has no NaN pixel, so every pixel reads as measured (a measured 0 is a "
                "real value). Say which pixels were measured: --mask FILE (non-zero = measured), "
                "--coords FILE (scan positions), or --zeros-unmeasured."
            )
    return [{"values": f, "mask": m} for f, m in zip(frames, masks, strict=True)], data.ndim == 3


def _channel_range(name: str, axis, n: int, window, units: str) -> tuple[int, int] | None:
    """The channels ``[start, stop)`` whose axis values lie inside ``window`` (axis units)."""
    if window is None:
        return None
    lo, hi = sorted(float(w) for w in window)
    values = np.arange(n, dtype=float) if axis is None else np.asarray(axis, float)
    inside = np.flatnonzero((values >= lo) & (values <= hi))
    if len(inside) < 8:
        raise InputError(
            f"--window {lo:g} {hi:g} covers {len(inside)} channel(s) of {name} (its axis "
            f"runs {values.min():g} to {values.max():g} {units}); at least 8 are needed."
        )
    return int(inside[0]), int(inside[-1]) + 1


def load_jobs(
    files: list,
    tool: str,
    *,
    failures: list[Failure] | None = None,
    channels_last: bool = False,
    scan: ScanMask | None = None,
    window: tuple[float, float] | None = None,
) -> list[Job]:
    """Read (lazily where large) and validate every input before any work starts.

    An explicitly named single-dataset file that the tool cannot take is an error; datasets
    found through a folder, or extra datasets of a multi-dataset file (e.g. the EDS spectrum
    beside the HAADF image in a Velox .emd), are skipped with a note when unsuitable. With a
    ``failures`` list (``--keep-going``), an input that is an error is recorded there instead.
    """
    from napari_microml.completion.scan_io import undeclared_grid_note
    from napari_microml.io.reader import read_file
    from napari_microml.spectra.preprocess import signal_type_of

    per = ADAPTERS[tool].per
    jobs: list[Job] = []
    stems: set[str] = set()
    skipped: list[str] = []
    cache: dict = {}
    for entry in files:
        f, from_folder = entry if isinstance(entry, tuple) else (Path(entry), False)
        try:
            try:
                layers = read_file(f)
            except ValueError as err:
                raise InputError(str(err)) from err
            for k, (data, kwargs, _) in enumerate(layers):
                name = f.name if len(layers) == 1 else f"{f.name} [{kwargs.get('name', k)}]"
                reason = _unsuitable(name, data, kwargs, tool, channels_last)
                if reason is not None:
                    if not from_folder and len(layers) == 1:
                        raise InputError(reason)
                    skipped.append(reason)
                    continue
                stem = f.stem if len(layers) == 1 else f"{f.stem}_{k}"
                while stem in stems:
                    stem += "_"
                if tool == "complete":
                    items, is_stack = _scan_items(name, data, scan or ScanMask(), cache)
                    note = undeclared_grid_note(kwargs.get("metadata"), data.shape[-2:])
                    if note:
                        print(f"microml complete: {note}", file=sys.stderr)
                    jobs.append(
                        Job(f, stem, data, kwargs, items, is_stack, tuple(items[0]["values"].shape))
                    )
                elif per == "frame":
                    items = [data] if data.ndim == 2 else [data[i] for i in range(data.shape[0])]
                    jobs.append(
                        Job(f, stem, data, kwargs, items, data.ndim == 3, tuple(data.shape[-2:]))
                    )
                else:
                    spectral = _spectral_axis(kwargs)
                    block = data.reshape(-1, data.shape[-1])
                    axis = None
                    if spectral is not None:
                        axis = spectral["offset"] + spectral["scale"] * np.arange(data.shape[-1])
                    units = spectral["units"] if spectral else "channels"
                    span = _channel_range(name, axis, data.shape[-1], window, units)
                    jobs.append(
                        Job(
                            f,
                            stem,
                            data,
                            kwargs,
                            [
                                {
                                    "spectra": block,
                                    "axis": axis,
                                    "channel_range": span,
                                    "units": units if spectral else "",
                                    "shape": tuple(data.shape[:-1]),
                                    "name": name,
                                    "signal_type": signal_type_of(kwargs.get("metadata")),
                                }
                            ],
                            False,
                            tuple(data.shape[:-1]),
                        )
                    )
                stems.add(stem)
        except InputError as err:
            if failures is None:
                raise
            failures.append(Failure(f.name, str(err)))
    for reason in skipped:
        print(f"microml: skipped {reason}", file=sys.stderr)
    if not jobs and not failures:
        raise InputError(
            skipped[0]
            if len(skipped) == 1
            else f"nothing in the inputs suits {tool}: {len(skipped)} dataset(s) "
            f"skipped (first: {skipped[0] if skipped else 'none'})"
        )
    return jobs


# ----------------------------------------------------------------------------- running
def process_items(
    items: list,
    run: Callable | list[Callable],
    *,
    device: str = "auto",
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    labels: list[str] | None = None,
    doing: str = "",
) -> list[dict]:
    """Run ``run(item, device)`` on every item in parallel with dask; results in order.
    ``run`` is one callable for all items or a list of one per item.

    ``scheduler=None`` uses the local threaded scheduler with ``workers`` threads and, with
    ``progress``, a :class:`ProgressLine` naming each item by ``labels`` (what it is
    ``doing`` and its core's current step); otherwise ``scheduler`` is a ``dask.distributed``
    scheduler address (``tcp://host:port``) and the line counts finished frames.
    """
    import dask

    runs = run if isinstance(run, list) else [run] * len(items)
    if scheduler is None:
        if not progress:
            tasks = [
                dask.delayed(r, pure=False)(it, device) for r, it in zip(runs, items, strict=True)
            ]
            return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
        names = labels or [f"item {i + 1}" for i in range(len(items))]
        with ProgressLine(names, doing) as line:
            tasks = [
                dask.delayed(functools.partial(_reporting, r, line=line, index=i), pure=False)(
                    it, device
                )
                for i, (r, it) in enumerate(zip(runs, items, strict=True))
            ]
            return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))

    from distributed import Client, as_completed

    with Client(scheduler, timeout="20s") as client:
        if all(isinstance(it, np.ndarray) for it in items):
            # in-memory frames: send each once instead of embedding them in the graph
            remote = client.scatter([np.asarray(it) for it in items])
            futures = [
                client.submit(r, x, device, pure=False) for r, x in zip(runs, remote, strict=True)
            ]
        else:
            # lazy frames: file-backed graphs (open vendor files) do not pickle, so this
            # process reads each item and submits it as soon as it is loaded
            futures = [
                client.submit(r, _materialize(it), device, pure=False)
                for r, it in zip(runs, items, strict=True)
            ]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(futures)
        done = 0
        for fut in as_completed(futures):
            results[index[fut.key]] = fut.result()
            done += 1
            if progress:
                print(
                    f"\r[{tool_bar(done, len(futures))}] {done}/{len(futures)} frames",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
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


def _guarded(run: Callable, item, device: str = "auto"):
    """``run(item, device)``, with an error returned as a :class:`Failure` so one bad frame
    does not take the other inputs' results with it (``--keep-going``)."""
    try:
        return run(item, device)
    except (ValueError, TypeError) as err:  # the package's sentence for input it cannot take
        return Failure("", _one_line(err), bad_input=True)
    except Exception as err:  # noqa: BLE001 - reported per input, nothing written for it
        return Failure("", f"{type(err).__name__}: {_one_line(err)}", bad_input=False)


def _calibrated(run: Callable, job: Job, tool: str) -> Callable:
    """``run`` given the job's nm per pixel when the file is calibrated in a length unit and
    the tool takes ``pixel_size`` (atoms, defects: as their docks do), and told that a frame
    from a scanning-probe file is an SPM scan where the tool takes ``scan`` (as the Atom
    finder dock does); without a calibration it says (stderr) that the results are in px."""
    import inspect

    from napari_microml.runtime.level import scan_kind
    from napari_microml.runtime.units import nm_per_pixel

    params = inspect.signature(run).parameters
    if "scan" in params:
        run = functools.partial(run, scan=scan_kind(job.kwargs.get("metadata")))
    if "pixel_size" not in params:
        return run
    size = nm_per_pixel(scale=job.kwargs.get("scale"), units=job.kwargs.get("units"))
    if size is None:
        print(
            f"microml {tool}: {job.source.name} has no length calibration; positions, "
            "distances and areas are in px (--pixel-size NM gives them in nm).",
            file=sys.stderr,
        )
        return run
    return functools.partial(run, pixel_size=size)


def _with_pixel_size(job: Job, size: float) -> dict:
    """The job's reader kwargs with the image plane calibrated at ``size`` nm per pixel (its
    offsets, in the file's old unit, reset to 0)."""
    scale, trans, units = _geometry(job)
    scale[-2:], trans[-2:], units[-2:] = [size, size], [0.0, 0.0], ["nm", "nm"]
    return {**job.kwargs, "scale": tuple(scale), "translate": tuple(trans), "units": tuple(units)}


def _geometry(job: Job) -> tuple[list, list, list]:
    kw, nd = job.kwargs, job.data.ndim
    return (
        list(kw.get("scale", [1.0] * nd)),
        list(kw.get("translate", [0.0] * nd)),
        [str(u) for u in kw.get("units", ["pixel"] * nd)],
    )


def _write_outputs(tool: str, job: Job, results: list[dict], stage: Path, prov: dict) -> list[Path]:
    """Write one job's results into ``stage`` under :func:`output_names`; returns the paths."""
    import pandas as pd

    from napari_microml.io import writer
    from napari_microml.spectra.table import shift_table

    names = output_names(tool, job.stem)
    scale, trans, units = _geometry(job)
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
        table = (
            pd.concat(feats, ignore_index=True)
            if any(len(f.columns) for f in feats)
            else pd.DataFrame()
        )
        attrs = {
            "scale": scale[-d:],
            "translate": trans[-d:],
            "units": units[-d:],
            "features": table,
            "metadata": md,
            "name": f"{job.stem} atoms",
        }
        written += [Path(x) for x in writer.write_points_csv(str(stage / names[0]), data, attrs)]
    elif tool == "defects":
        labels = np.stack([r["labels"] for r in results]) if job.is_stack else results[0]["labels"]
        attrs = {
            "scale": scale,
            "translate": trans,
            "units": units,
            "metadata": md,
            "name": f"{job.stem} defects",
        }
        written += [Path(x) for x in writer.write_labels_tiff(str(stage / names[0]), labels, attrs)]
        tables = []
        for i, r in enumerate(results):
            t = r["table"].copy()
            if job.is_stack:
                t.insert(0, "frame", i)
            tables.append(t)
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        counts = None
        if all(r.get("counts") is not None for r in results):  # summed over the frames
            counts = (
                pd.concat([r["counts"] for r in results])
                .groupby("class", sort=False, as_index=False)["count"]
                .sum()
            )
            area = sum(r.get("area_nm2") or np.nan for r in results)
            counts["density_per_nm2"] = counts["count"] / area
        written.append(
            Path(
                writer.write_defects_csv(
                    stage / names[1],
                    table,
                    counts,
                    provenance=md,
                    image=job.source.name,
                    pixel_size=results[0].get("pixel_size"),
                )
            )
        )
    elif tool == "complete":
        for key, name in zip(("image", "uncertainty"), names[:2], strict=True):
            arr = np.stack([r[key] for r in results]) if job.is_stack else results[0][key]
            nd = arr.ndim
            attrs = {
                "scale": scale[-nd:],
                "translate": trans[-nd:],
                "units": units[-nd:],
                "metadata": md,
                "name": f"{job.stem} completed {key}",
            }
            written += [Path(x) for x in writer.write_image_tiff(str(stage / name), arr, attrs)]
    elif tool == "spectra":
        r = results[0]
        spatial = len(job.shape)
        attrs = {
            "scale": scale[:spatial],
            "translate": trans[:spatial],
            "units": units[:spatial],
            "metadata": md,
            "name": f"{job.stem} shift",
        }
        written += [
            Path(x)
            for x in writer.write_image_tiff(
                str(stage / names[0]), r["shift"].reshape(job.shape).astype(np.float32), attrs
            )
        ]
        spectral = _spectral_axis(job.kwargs)
        table = shift_table(
            r["shift"].reshape(job.shape),
            r["latents"],
            axes=list(zip(scale, trans, units, strict=False))[:spatial],
            shift_units=spectral["units"] if spectral else None,
        )
        table.to_csv(stage / names[1], index=False)
        written.append(stage / names[1])
    unplanned = {p.name for p in written} - set(names)
    if unplanned:  # the overwrite check only knew the planned names
        raise ToolError(f"wrote unplanned file(s) {sorted(unplanned)}")
    return written


# ------------------------------------------------------------------- staging and commit
class _Interrupts:
    """SIGINT/SIGTERM become KeyboardInterrupt, except inside :func:`_uninterrupted` blocks
    (commit, roll back, clean up), where they wait until the block has finished."""

    defer = 0
    pending = False


def _on_signal(signum, frame):
    if _Interrupts.defer:
        _Interrupts.pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def _uninterrupted(drop: bool = False):
    """Hold SIGINT/SIGTERM until the block ends; then raise, or with ``drop`` (the run's
    results are already in place) forget them: the run has finished."""
    _Interrupts.defer += 1
    try:
        yield
    finally:
        _Interrupts.defer -= 1
        if not _Interrupts.defer and _Interrupts.pending:
            _Interrupts.pending = False
            if not drop:
                raise KeyboardInterrupt


def _try_lock(fh) -> bool:
    """Exclusive, non-blocking lock on an open file; released by the OS when its process dies."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


_rename = os.replace  # one place for the moves, so tests can interrupt a commit half way


class Staging:
    """A hidden folder inside ``--out`` where a run writes its results before they are renamed
    into place. ``lock`` (held while the run lives) tells a live run's folder from a killed one;
    ``journal.json`` (written before the first rename) lets a later run undo a half-done commit;
    ``old/`` keeps the files ``--overwrite`` replaces until the commit is complete."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
        self._lock = open(self.dir / "lock", "w")  # noqa: SIM115 - held for the run's lifetime
        _try_lock(self._lock)
        self.new = self.dir / "new"
        self.new.mkdir()

    def commit(self, names: list[str], replace: set[str]) -> list[Path]:
        """Rename every staged file into ``out``; on any failure put ``out`` back as it was.

        ``replace`` are the names that may already exist (``--overwrite``); anything else found
        in the way (a folder, a file that appeared meanwhile) fails the whole commit.
        """
        journal: list[dict[str, Any]] = [
            {"name": n, "existed": os.path.lexists(self.out / n)} for n in names
        ]
        blocked = [e["name"] for e in journal if e["existed"] and e["name"] not in replace]
        if blocked:
            raise ToolError(
                f"{', '.join(blocked)} appeared in {self.out} during the run; nothing was written"
            )
        (self.dir / "old").mkdir()
        tmp = self.dir / "journal.tmp"
        tmp.write_text(json.dumps({"state": "committing", "files": journal}))
        os.replace(tmp, self.dir / "journal.json")
        try:
            for e in journal:
                dest = self.out / e["name"]
                if e["existed"]:
                    if dest.is_dir() and not dest.is_symlink():
                        raise ToolError(f"{dest} is a folder; cannot put a result file there")
                    _rename(dest, self.dir / "old" / e["name"])
                _rename(self.new / e["name"], dest)
            tmp.write_text(json.dumps({"state": "done", "files": journal}))
            os.replace(tmp, self.dir / "journal.json")
        except BaseException:
            undo(self.dir, self.out)
            raise
        return [self.out / n for n in names]

    def close(self) -> None:
        self._lock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def undo(stage: Path, out: Path) -> None:
    """Roll back a commit journalled in ``stage``: results this run moved into ``out`` are
    removed and the files they replaced are put back. A finished commit is left alone."""
    journal = stage / "journal.json"
    if not journal.is_file():
        return  # nothing was moved yet
    try:
        record = json.loads(journal.read_text())
    except (OSError, ValueError):
        return
    if record.get("state") == "done":
        return
    for e in record.get("files", []):
        dest, old, new = out / e["name"], stage / "old" / e["name"], stage / "new" / e["name"]
        if e["existed"]:
            if os.path.lexists(old):
                os.replace(old, dest)  # the user's earlier file, back in place
        elif not os.path.lexists(new) and os.path.lexists(dest) and not dest.is_dir():
            dest.unlink()  # moved in by this run
    journal.unlink()


def clean_stale_staging(out: Path, min_age_s: float = 30.0) -> list[Path]:
    """Roll back and remove staging folders left in ``out`` by runs that were killed.

    A folder whose ``lock`` another process still holds belongs to a live run and is left; a
    folder without a lock file (an older microml, or one made this instant) only once it is
    ``min_age_s`` old.
    """
    cleaned: list[Path] = []
    if not out.is_dir():
        return cleaned
    for stage in sorted(out.glob(STAGING_PREFIX + "*")):
        if not stage.is_dir() or stage.is_symlink():
            continue
        lock = stage / "lock"
        if lock.is_file():
            with open(lock, "a") as fh:
                if not _try_lock(fh):
                    continue  # a live run
        elif time.time() - stage.stat().st_mtime < min_age_s:
            continue
        undo(stage, out)
        shutil.rmtree(stage, ignore_errors=True)
        cleaned.append(stage)
    return cleaned


def check_out(out: Path, names: list[str], overwrite: bool = False) -> set[str]:
    """Get ``out`` ready for a run that will write ``names``, before any work is done.

    Staging folders of killed runs are rolled back and removed first (they may hold the user's
    earlier results). Raises :class:`InputError` when a name is taken by a folder, or by a file
    and ``overwrite`` is False. Returns the names that exist and will be replaced. With
    :class:`Staging` this is the one way microml subcommands put files into ``--out``.
    """
    with _uninterrupted():
        for stale in clean_stale_staging(out):
            print(
                f"microml: removed {stale.name}, left in {out} by an interrupted run",
                file=sys.stderr,
            )
    existing = [n for n in names if os.path.lexists(out / n)]
    folders = [n for n in existing if (out / n).is_dir()]
    if folders:
        raise InputError(
            f"{', '.join(folders)} in {out} {'is a folder' if len(folders) == 1 else 'are folders'}"
            "; a result file cannot replace a folder. Move it or choose another --out."
        )
    if existing and not overwrite:
        raise InputError(_existing_message(out, existing))
    return set(existing)


# ------------------------------------------------------------------------------ run_tool
@dataclass
class Report:
    """What a run did: the files written and the inputs that gave no result (and why)."""

    written: list[Path] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    empty: list[Failure] = field(default_factory=list)
    inputs: int = 0

    @property
    def exit_code(self) -> int:
        if not self.failed and not self.empty:
            return EXIT_OK
        if self.written or self.empty:
            return EXIT_PARTIAL
        return EXIT_USAGE if all(f.bad_input for f in self.failed) else EXIT_FAILED


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _existing_message(out: Path, existing: list[str]) -> str:
    shown = ", ".join(existing[:5]) + (
        f" and {len(existing) - 5} more" if len(existing) > 5 else ""
    )
    return (
        f"{_plural(len(existing), 'file')} in {out} would be overwritten: {shown}. "
        "Pass --overwrite to replace them, or choose another --out."
    )


def _empty_atoms(job: Job, results: list[dict], contrast: str) -> Failure | None:
    """An input in which no column was found at all gives no CSV, and says what to try."""
    from napari_microml.runtime.units import too_coarse

    if any(len(r["positions"]) for r in results):
        return None
    coarse = too_coarse(next((r.get("pixel_size") for r in results), None))
    if coarse:  # no --contrast can help there
        return Failure(
            job.source.name,
            f"no atomic columns found: {coarse}; nothing written for it. The atom finder "
            "needs an atomic-resolution image.",
        )
    used = contrast
    for r in results:
        prov = r.get("provenance") or {}
        used = (
            (prov.get("parameters") or {}).get("contrast", used) if isinstance(prov, dict) else used
        )
    other = "bright" if used == "dark" else "dark"
    look = (
        "bright columns on a dark background (HAADF/ADF)"
        if other == "bright"
        else "dark columns on a bright background (ABF/BF)"
    )
    return Failure(
        job.source.name,
        f"no atomic columns found (contrast {used}); nothing written "
        f"for it. If it shows {look}, try --contrast {other}.",
    )


def run_tool(
    tool: str,
    inputs: list[str],
    out: str,
    *,
    device: str = "auto",
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    model: str | None = None,
    rescale: str | None = None,
    contrast: str = "auto",
    pixel_size: float | None = None,
    overwrite: bool = False,
    keep_going: bool = False,
    scan: ScanMask | None = None,
    channels_last: bool = False,
    window: tuple[float, float] | None = None,
    command: list[str] | None = None,
) -> Report:
    """Validate ``inputs``, run ``tool`` on them and write results into ``out``.

    Returns a :class:`Report`. Raises :class:`InputError` for bad input or usage and
    :class:`ToolError` when a tool fails (without ``keep_going``); either way nothing is
    written and ``out`` is as it was.
    """
    from napari_microml.runtime.provenance import make_provenance

    adapter = ADAPTERS[tool]
    run = adapter.run
    if model is not None:
        choices = model_choices(tool)
        if model not in choices:
            raise InputError(
                f"--model {model!r} is not a {tool} model; choose one of {', '.join(choices)}."
            )
        run = functools.partial(run, model=model)
    if rescale is not None:
        from napari_microml.runtime.spacing import RESCALE_MODES

        if not adapter.rescale:
            raise InputError(f"{tool} takes no --rescale (only the lattice tools do).")
        if rescale not in RESCALE_MODES:
            raise InputError(f"--rescale {rescale!r}: choose one of {', '.join(RESCALE_MODES)}.")
        run = functools.partial(run, rescale=rescale)
    from napari_microml.runtime.contrast import CONTRASTS

    if contrast not in CONTRASTS:
        raise InputError(f"--contrast {contrast!r}: choose one of {', '.join(CONTRASTS)}.")
    if contrast != "auto":
        if tool != "atoms":
            raise InputError(f"{tool} takes no --contrast (only atoms does).")
        run = functools.partial(run, contrast=contrast)
    if pixel_size is not None:
        import inspect

        if "pixel_size" not in inspect.signature(adapter.run).parameters:
            raise InputError(f"{tool} takes no --pixel-size (only atoms and defects do).")
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise InputError("--pixel-size must be a positive number of nm per pixel.")
    scan = scan or ScanMask()
    if tool != "complete" and (scan.mask or scan.coords or scan.zeros_unmeasured or scan.scan_info):
        raise InputError(
            f"--mask, --coords, --scan-info and --zeros-unmeasured are for complete, not {tool}."
        )
    if sum(bool(x) for x in (scan.mask, scan.coords, scan.zeros_unmeasured)) > 1:
        raise InputError("give one of --mask, --coords and --zeros-unmeasured, not several.")
    if scan.scan_info and not scan.coords:
        raise InputError("--scan-info goes with --coords (it places the scan positions).")
    if (channels_last or window is not None) and tool != "spectra":
        raise InputError(f"{tool} takes no --channels-last or --window (only spectra does).")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder.")

    report = Report()
    failures: list[Failure] | None = report.failed if keep_going else None
    skipped: list[str] = []
    files = collect_inputs(inputs, failures, skipped)
    for note in skipped:
        print(f"microml: skipped {note}", file=sys.stderr)
    jobs = load_jobs(
        files, tool, failures=failures, channels_last=channels_last, scan=scan, window=window
    )
    report.inputs = len(jobs) + len(report.failed)
    if not jobs:
        return report
    if pixel_size is not None:  # the user's calibration replaces the file's, outputs included
        for job in jobs:
            job.kwargs = _with_pixel_size(job, pixel_size)

    planned = {job.stem: output_names(tool, job.stem) for job in jobs}
    existing = check_out(out_dir, [n for names in planned.values() for n in names], overwrite)

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [it for job in jobs for it in job.items]
    t0 = time.perf_counter()
    if progress:
        print(
            f"microml {tool}: {_plural(len(jobs), 'input')}, {len(items)} "
            f"{'frame' if adapter.per == 'frame' else 'block'}(s)",
            file=sys.stderr,
        )
    stage = None
    try:
        with _uninterrupted():
            stage = Staging(out_dir)
        results = process_items(
            items,
            [
                functools.partial(_guarded, calibrated)
                for job in jobs
                for calibrated in [_calibrated(run, job, tool)] * len(job.items)
            ],
            device=device,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            labels=[
                job.source.name + (f" frame {i + 1}/{len(job.items)}" if job.is_stack else "")
                for job in jobs
                for i in range(len(job.items))
            ],
            doing=adapter.doing,
        )
        for r in results:  # what an adapter chose or doubts (spectra: the window), after the bar
            for note in r.get("notes", ()) if isinstance(r, dict) else ():
                print(f"microml {tool}: {note}", file=sys.stderr)
        seconds = time.perf_counter() - t0
        names: list[str] = []
        k = 0
        for job in jobs:
            res = results[k : k + len(job.items)]
            k += len(job.items)
            bad = next((r for r in res if isinstance(r, Failure)), None)
            if bad is not None:
                bad.name = (
                    job.source.name
                    if job.stem == job.source.stem
                    else f"{job.source.name} ({job.stem})"
                )
                if not keep_going:
                    raise (InputError if bad.bad_input else ToolError)(f"{bad.name}: {bad.reason}")
                report.failed.append(bad)
                continue
            if tool == "atoms":
                empty = _empty_atoms(job, res, contrast)
                if empty is not None:
                    report.empty.append(empty)
                    continue
            tool_prov = next((r.get("provenance") for r in res if r.get("provenance")), None)
            prov = make_provenance(
                f"cli.{tool}",
                parameters={
                    "command": command,
                    "frames": len(job.items),
                    "scheduler": scheduler or "threads",
                    "workers": workers,
                    "device": device,
                    "model": model,
                    "rescale": rescale,
                    "contrast": contrast if tool == "atoms" else None,
                    "pixel_size": pixel_size,
                    "measured_pixels": scan.describe() if tool == "complete" else None,
                    "mask_file": scan.mask,
                    "coords_file": scan.coords,
                    "channels_last": channels_last,
                    "window": window,
                    "overwrite": overwrite,
                    "keep_going": keep_going,
                    "seconds_total": round(seconds, 3),
                    "tool_provenance": tool_prov,
                },
                model=(tool_prov or {}).get("model") if isinstance(tool_prov, dict) else None,
                device=device,
                input_name=job.stem,
                input_file=job.source,
            )
            try:
                _write_outputs(tool, job, res, stage.new, prov)
                pfile = stage.new / planned[job.stem][-1]
                pfile.write_text(json.dumps(prov, indent=1))
            except Exception as err:  # noqa: BLE001 - the input's results are dropped
                if not keep_going:
                    raise ToolError(
                        f"{job.source.name}: writing the results failed: "
                        f"{type(err).__name__}: {_one_line(err)}"
                    ) from err
                for name in planned[job.stem]:
                    (stage.new / name).unlink(missing_ok=True)
                report.failed.append(
                    Failure(
                        job.source.name,
                        f"writing the results failed: {_one_line(err)}",
                        bad_input=False,
                    )
                )
                continue
            names += planned[job.stem]
        if names:
            with _uninterrupted():
                if _Interrupts.pending:  # Ctrl-C just before the commit: do not start it
                    raise KeyboardInterrupt
            with _uninterrupted(drop=True):
                report.written = stage.commit(names, existing)
        return report
    finally:
        with _uninterrupted(drop=bool(report.written)):
            if stage is not None:
                stage.close()
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()


# --------------------------------------------------------------------------------- main
_MODEL_HELP = {
    "atoms": "atom-finder model: auto (the default: 'default' for lattices, re-run with "
    "'pt-single-atoms' when neither the columns found nor the image show a lattice, judged per "
    "frame) or an atoms model listed by `microml models`, your fine-tuned ones included",
    "defects": "defect model: auto (the default: 'dichalcogenide' for honeycombs of two "
    "unequally bright sublattices, else 'default') or a defects model listed by "
    "`microml models`",
    "complete": "completion method: kriging (the default: a local Gaussian process fitted to "
    "each scan, no network), local-gp (the slower reference) or a completion network listed "
    "by `microml models`",
}


def _parser() -> argparse.ArgumentParser:
    from napari_microml import __version__
    from napari_microml.runtime.device import CHOICES as DEVICES

    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(
        prog="microml",
        description="napari-microml batch tools.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    ap.add_argument("--version", action="version", version=f"napari-microml {__version__}")
    sub = ap.add_subparsers(dest="command")
    sub.add_parser(
        "models",
        help="list shipped models with their sha256",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    for name, ad in ADAPTERS.items():
        sp = sub.add_parser(
            name, help=ad.help, description=ad.help, epilog=EXIT_CODES, formatter_class=fmt
        )
        sp.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or stacks")
        sp.add_argument("--out", required=True, help="output folder")
        sp.add_argument(
            "--overwrite",
            action="store_true",
            help="replace result files of the same names already in --out (default: "
            "refuse, exit 2, naming them)",
        )
        sp.add_argument(
            "--keep-going",
            action="store_true",
            help="when some inputs fail, still write the others' results (exit 3, the "
            "failed inputs named on stderr); default: all or nothing",
        )
        sp.add_argument(
            "--scheduler",
            default=None,
            help="dask.distributed scheduler address (default: local threads)",
        )
        sp.add_argument(
            "--workers", type=int, default=None, help="local threads (default: all cores)"
        )
        sp.add_argument(
            "--device",
            default="auto",
            choices=list(DEVICES),
            help="where networks run (default auto)",
        )
        sp.add_argument("--quiet", action="store_true", help="no progress output")
        if ad.task is not None:
            sp.add_argument("--model", default=None, help=_MODEL_HELP[name])
        if ad.rescale:
            from napari_microml.atoms.finder import NOISY_PERIOD
            from napari_microml.runtime.spacing import RESCALE_MODES, TARGET

            trained = f"5–{NOISY_PERIOD:g} px" if name == "atoms" else "5–36 px"
            sp.add_argument(
                "--rescale",
                default=None,
                choices=list(RESCALE_MODES),
                help="resample each frame's lattice for the network: auto (default) when "
                f"its period is outside the trained {trained}, always to a {TARGET:g} px "
                "period, off never",
            )
        if name in ("atoms", "defects"):
            sp.add_argument(
                "--pixel-size",
                type=float,
                default=None,
                metavar="NM",
                help="nm per pixel for a file without a length calibration (it replaces the "
                "file's own); default: the file's calibration, else results in px",
            )
        if name == "atoms":
            from napari_microml.runtime.contrast import CONTRASTS

            sp.add_argument(
                "--contrast",
                default="auto",
                choices=list(CONTRASTS),
                help="columns brighter than the background (bright: HAADF/ADF/STM), "
                "darker (dark: ABF/BF), or auto: decided per image (default)",
            )
        if name == "complete":
            grp = sp.add_mutually_exclusive_group()
            grp.add_argument(
                "--mask",
                default=None,
                metavar="FILE",
                help="image of the measured pixels (non-zero = measured), same size as "
                "the scan (or a stack of them); default: NaN pixels are unmeasured",
            )
            grp.add_argument(
                "--coords",
                default=None,
                metavar="FILE",
                help="scan positions, two integer columns per line (x, y; see "
                "--coords-order); with a movie input (one frame per position) the "
                "frame sums are the measured values",
            )
            grp.add_argument(
                "--zeros-unmeasured",
                action="store_true",
                help="pixels equal to 0 were not measured (never assumed otherwise: a "
                "measured 0 is a real value)",
            )
            sp.add_argument(
                "--coords-order",
                default="xy",
                choices=["xy", "yx"],
                help="column order in --coords (Direct Electron files: xy, the default)",
            )
            sp.add_argument(
                "--scan-info",
                default=None,
                metavar="FILE",
                help="Direct Electron *_info.txt: scan size and ROI offset for --coords",
            )
        if name == "spectra":
            sp.add_argument(
                "--channels-last",
                action="store_true",
                help="treat the last axis as spectral channels even though the file names "
                "no spectral axis (plain .npy/.tif arrays of spectra)",
            )
            sp.add_argument(
                "--window",
                nargs=2,
                type=float,
                default=None,
                metavar=("LO", "HI"),
                help="fit only the channels between LO and HI, in the spectral axis's units "
                "(e.g. eV; channel numbers with --channels-last), e.g. around a peak; "
                "default: around the most prominent peak of the mean spectrum (e.g. the "
                "zero-loss peak), as the widget chooses; the channels used are in the "
                "provenance",
            )
    from napari_microml.lattice.cli import add_parser as add_lattice_parser

    add_lattice_parser(sub)
    return ap


def _models() -> int:
    """Shipped models, then the user's fine-tuned ones with what they were taught."""
    from napari_microml.nets.registry import list_models
    from napari_microml.nets.user_models import ENV, models_dir

    models = list_models()
    for name, entry in sorted(models.items(), key=lambda kv: (bool(kv[1].get("user")), kv[0])):
        line = f"{name}\t{entry.get('task', '?')}\t"
        if entry.get("user"):
            v = entry.get("validation", {})
            line += (
                f"yours (from {entry.get('base', '?')}, {len(entry.get('images', []))} image(s), "
                f"{entry.get('n_points', '?')} points; held-out F1 {v.get('f1_before', '?')} → "
                f"{v.get('f1_after', '?')})\t"
            )
        else:
            line += f"shipped\t{entry.get('file', '?')}\t"
        print(line + f"sha256:{entry.get('sha256', '?')}")
    if not models:
        print("No models found: reinstall napari-microml.")
    if "auto" in model_choices("atoms"):
        print(
            "atoms --model auto (the default) runs 'default' and, where neither the columns it "
            "finds nor the image show a lattice, 'pt-single-atoms'."
        )
    print(f"Your fine-tuned models live in {models_dir()} (set {ENV} to use another folder).")
    return 0


def _redeliver_interrupt(unraisable) -> None:
    """A Ctrl-C that lands inside a finalizer (a weakref or ``__del__`` callback) cannot stop
    the run there, and Python would print it as an ignored traceback: send it again a moment
    later from a timer thread, once this hook and the finalizer have returned, so the run's own
    code receives it (``signal.raise_signal`` would run the handler inside this hook)."""
    import threading

    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
    else:
        sys.__unraisablehook__(unraisable)


def _install_handlers() -> dict:
    """SIGINT and SIGTERM (``kill``, job schedulers, ``timeout``) → KeyboardInterrupt, so the
    staging folder is removed and nothing half-written stays in ``--out``."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    if _CONSOLE:  # in someone else's process (tests, notebooks) their hook stays
        sys.unraisablehook = _redeliver_interrupt
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not allowed here (embedded interpreters)
            pass
    return previous


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``microml`` console script; returns the exit code (see EXIT_CODES)."""
    previous = _install_handlers()
    command = ""
    try:
        ap = _parser()
        args = ap.parse_args(argv)
        command = args.command or ""
        if args.command is None:
            ap.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "models":
            return _models()
        if args.command == "lattice":
            from napari_microml.lattice.cli import run as run_lattice

            return run_lattice(args)
        if args.workers is not None and args.workers < 1:
            print("microml: error: --workers must be at least 1.", file=sys.stderr)
            return EXIT_USAGE
        scan = ScanMask(
            getattr(args, "mask", None),
            getattr(args, "coords", None),
            getattr(args, "coords_order", "xy"),
            getattr(args, "scan_info", None),
            getattr(args, "zeros_unmeasured", False),
        )
        argv_used = list(sys.argv[1:] if argv is None else argv)
        try:
            report = run_tool(
                args.command,
                args.inputs,
                args.out,
                device=args.device,
                scheduler=args.scheduler,
                workers=args.workers,
                progress=not args.quiet,
                model=getattr(args, "model", None),
                rescale=getattr(args, "rescale", None),
                contrast=getattr(args, "contrast", "auto"),
                pixel_size=getattr(args, "pixel_size", None),
                overwrite=args.overwrite,
                keep_going=args.keep_going,
                scan=scan,
                channels_last=getattr(args, "channels_last", False),
                window=getattr(args, "window", None),
                command=["microml", *argv_used],
            )
        except InputError as err:
            print(f"microml: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as err:  # noqa: BLE001 - one line for the user, nothing written
            msg = _one_line(err)
            kind = "" if isinstance(err, ToolError) else f"{type(err).__name__}: "
            print(
                f"microml: {args.command} failed: {kind}{msg}; nothing was written.",
                file=sys.stderr,
            )
            return EXIT_FAILED
        for sig in previous:  # the results are in place: a Ctrl-C now cannot undo them
            signal.signal(sig, signal.SIG_IGN)
        for f in report.failed:
            print(
                f"microml: {args.command}: {f.name}: {'error: ' if f.bad_input else 'failed: '}"
                f"{f.reason}",
                file=sys.stderr,
            )
        for f in report.empty:
            print(f"microml: {args.command}: {f.name}: {f.reason}", file=sys.stderr)
        if not args.quiet or report.failed or report.empty:
            gave = report.inputs - len(report.failed) - len(report.empty)
            print(
                f"microml {args.command}: wrote {_plural(len(report.written), 'file')} "
                f"to {args.out} "
                f"({gave} of {_plural(report.inputs, 'input')} gave results)",
                file=sys.stderr,
            )
        try:
            for p in report.written:
                print(p, flush=True)
        except BrokenPipeError:  # e.g. `microml ... | head -1`: the files are written all the same
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's documented recipe
        return report.exit_code
    except KeyboardInterrupt:
        for sig in previous:  # a second Ctrl-C while reporting changes nothing
            signal.signal(sig, signal.SIG_IGN)
        print(
            f"microml: {command + ' ' if command else ''}interrupted; nothing was written.",
            file=sys.stderr,
        )
        if _CONSOLE:  # do not wait for worker threads still inside a frame
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            if _CONSOLE:  # the process exits next: a late Ctrl-C changes nothing
                signal.signal(sig, signal.SIG_IGN)
            elif handler is not None:
                signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
