"""npe2 reader: vendor microscopy files → napari layers with scale, units and axis labels.

Parsing is done by RosettaSciIO (``rsciio``); this module only maps its ``{data, axes,
metadata, original_metadata}`` dictionaries onto napari ``LayerData`` tuples.

* Images and stacks become ``image`` layers (integer data stays integer) with ``scale``,
  ``translate`` (the axis offsets), ``units`` and ``axis_labels`` from the file's axes.
* Spectrum images keep the spectral axis **last** (:func:`read_file`); its
  scale/offset/units/name are also stored in ``metadata['napari_microml']['spectral_axis']``.
  In napari (the npe2 reader) spectrum images are laid out energy-first so the image plane is
  shown (see :mod:`napari_microml.runtime.spectral`).
* Every length axis is given in nm and energies in eV (napari does not convert units between
  layers: a µm file beside an nm one would not overlay); the file's unit, scale and offset are
  kept in ``metadata['napari_microml']['file_units']``.
* An axis with a scale but no unit stays in pixels (scale 1): a length cannot be guessed; the
  file's number is kept in ``metadata['napari_microml']['unlabelled_scale']``.
* A non-uniform axis (a BEPS bias waveform 0 → 8.5 → −8.5 → 0 V) is shown in channels (scale 1,
  unit ``pixel``); its values and unit are in the spectral axis record.
* The full rsciio metadata is kept in ``metadata['original']``.
* Files above :data:`LAZY_BYTES` are read lazily (dask arrays).
"""

from __future__ import annotations

import builtins
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LAZY_BYTES = 200 * 2**20

# extension -> (rsciio plugin module, human format name); None = numpy
FORMATS: dict[str, tuple[str | None, str]] = {
    ".dm3": ("rsciio.digitalmicrograph", "Gatan DigitalMicrograph"),
    ".dm4": ("rsciio.digitalmicrograph", "Gatan DigitalMicrograph"),
    ".emd": ("rsciio.emd", "EMD (Velox / NCEM)"),
    ".ser": ("rsciio.tia", "FEI TIA"),
    ".mrc": ("rsciio.mrc", "MRC"),
    ".hspy": ("rsciio.hspy", "HyperSpy"),
    ".h5": ("rsciio.hspy", "HyperSpy or pycroscopy (NSID) HDF5"),
    ".tif": ("rsciio.tiff", "TIFF"),
    ".tiff": ("rsciio.tiff", "TIFF"),
    ".msa": ("rsciio.msa", "EMSA/MSA spectrum"),
    ".emsa": ("rsciio.msa", "EMSA/MSA spectrum"),
    ".npy": (None, "NumPy"),
    ".csv": (None, "CSV of scan positions and values (x, y, value)"),
    # scanning-probe (STM/AFM) files: io.spm reads them with rsciio's signature
    ".sxm": ("napari_microml.io.spm", "Nanonis"),
    ".gwy": ("napari_microml.io.spm", "Gwyddion"),
    ".ibw": ("napari_microml.io.spm", "Asylum Research / Igor binary wave"),
    ".sur": ("napari_microml.io.spm", "Digital Surf"),
    ".pro": ("napari_microml.io.spm", "Digital Surf profile"),
}
SPM_EXTENSIONS = {ext for ext, (module, _) in FORMATS.items() if module == "napari_microml.io.spm"}
SPECTRAL_UNITS = {"ev", "kev", "mev", "cm^-1", "1/cm", "cm-1"}
SPECTRAL_WORDS = ("energy", "loss", "wavelength", "raman", "wavenumber")

LayerData = tuple  # (data, kwargs, layer_type)


# ----------------------------------------------------------------------------------- npe2
def get_reader(path) -> Callable | None:
    """npe2 ``get_reader``: a reader function for supported files, else ``None``. Never raises."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        p = Path(path)
        ext = p.suffix.lower()
        if ext == ".csv":  # our points CSV; a sparse scan's x, y, value; any other is napari's
            if _is_points_csv(p):
                return _read_points
            if _scan_value_columns(p):
                return _napari_reader
            from napari_microml.completion.scan_io import COORDS_SUFFIX

            coordinates = p.name.lower().endswith(COORDS_SUFFIX)  # positions, no values
            return _read_scan_coordinates if coordinates else None
        if ext == ".zarr":
            return _read_bundle if _is_bundle(p) else None
        if ext not in FORMATS or not p.is_file():
            return None
        if ext == ".h5" and not (_is_hyperspy_h5(p) or _nsid_datasets(p)):
            return None
        return _napari_reader
    except Exception:  # noqa: BLE001 - a reader probe must never break napari's open()
        return None


def _napari_reader(path) -> list[LayerData]:
    paths = path if isinstance(path, (list, tuple)) else [path]
    from napari_microml.runtime.spectral import image_plane_layout

    layers: list[LayerData] = []
    for p in paths:  # spectrum images energy-first: the canvas shows the image plane
        read = read_file(p)
        if Path(p).suffix.lower() in SPM_EXTENSIONS:  # added last, the topography tops the list
            read = read[::-1]
        layers.extend((*image_plane_layout(data, kw), kind) for data, kw, kind in read)
        if Path(p).suffix.lower() == ".mrc":  # a Direct Electron random scan: its sparse image too
            from napari_microml.completion.scan_io import random_scan_layers

            layers.extend(random_scan_layers(p, layers[-1][0]))
    return layers


def _read_scan_coordinates(path) -> list[LayerData]:
    """Open the random scan of the movie a Direct Electron scan-position file belongs with.

    The positions alone have no values; without the movie, one sentence says what to open.
    """
    from napari_microml.completion.scan_io import (
        coordinates_only_sentence,
        movie_for_coordinates,
    )

    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    movie = movie_for_coordinates(p)
    if movie is None:
        raise ValueError(coordinates_only_sentence(p))
    return _napari_reader(str(movie))


def _is_points_csv(path: Path) -> bool:
    """Tell a CSV of :func:`napari_microml.io.writer.write_points_csv` by its header.

    Ours has row_px and col_px; napari's own points CSV has index, axis-0, axis-1.
    """
    if not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip().split(",")
    return {"row_px", "col_px"} <= set(header)


def _scan_value_columns(path: Path) -> tuple[int, int, int, str] | None:
    """Find the x, y and value columns of a sparse scan's CSV.

    ``(x, y, value)`` column indices and the value's name when the header names columns x and
    y (pixels) and one more, else ``None``.
    """
    import re

    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = [h.strip().strip('"').lower() for h in re.split(r"[,;\t]", fh.readline())]
    names = [re.sub(r"[ _]*\(?px\)?$|[ _]*\(?pixels?\)?$", "", h) for h in header]
    if len(names) != 3 or "x" not in names or "y" not in names or "" in names:
        return None  # "" or unnamed: an index column (a labels table's ",X,Y"), not a value
    value = next(i for i, n in enumerate(names) if n not in ("x", "y"))
    return names.index("x"), names.index("y"), value, header[value] or "value"


def _read_scan_values(p: Path) -> list[dict]:
    """Read a CSV of (x, y, value) measurements at scan pixels as a NaN-gapped image.

    NaN = not measured; a pixel measured twice holds the mean. Returns rsciio-like dicts.
    """
    import pandas as pd

    from napari_microml.completion.scan_io import declared_scan_shape, rasterise

    columns = _scan_value_columns(p)
    if columns is None:
        raise ValueError(
            "its header does not name columns x, y and one value (pixels); that is the only "
            "CSV napari-microml reads besides its own points tables"
        )
    ix, iy, iv, name = columns
    table = pd.read_csv(p, sep=None, engine="python")
    numbers = table.apply(pd.to_numeric, errors="coerce")
    if numbers.isna().any().any():
        row = int(numbers.isna().any(axis=1).to_numpy().argmax()) + 2
        raise ValueError(f"line {row} holds something other than three numbers")
    xyv = numbers.to_numpy(float)
    shape, declared_in = declared_scan_shape(p)  # else as large as the furthest position
    values, measured = rasterise(xyv[:, [iy, ix]], xyv[:, iv], shape)
    image = np.where(measured, values, np.nan).astype(np.float32)
    return [
        {
            "data": image,
            "axes": [],
            "metadata": {"General": {"title": p.stem}, "Signal": {"quantity": name}},
            "original_metadata": {
                "positions": len(xyv),
                "pixels_measured": int(measured.sum()),
                "grid_declared_in": declared_in,
            },
        }
    ]


def _read_points(path) -> list[LayerData]:
    from napari_microml.io.writer import read_points_csv

    return [read_points_csv(path[0] if isinstance(path, (list, tuple)) else path)]


def _is_bundle(path: Path) -> bool:
    """Tell a folder written by :func:`napari_microml.io.writer.write_bundle`."""
    import zarr

    from napari_microml.io.writer import BUNDLE_FORMAT

    if not path.is_dir():
        return False
    return zarr.open_group(str(path), mode="r").attrs.get("format") == BUNDLE_FORMAT


def _read_bundle(path) -> list[LayerData]:
    from napari_microml.io.writer import read_bundle

    return read_bundle(path[0] if isinstance(path, (list, tuple)) else path)


def _is_hyperspy_h5(path: Path) -> bool:
    """Tell whether an .h5 file is a HyperSpy file that rsciio's hspy plugin can read."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("file_format", b"")
            if isinstance(fmt, bytes):
                fmt = fmt.decode(errors="ignore")
            return str(fmt).lower() == "hyperspy" and "Experiments" in f
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------- public
def read_file(path) -> list[LayerData]:
    """Read a microscopy file into napari ``LayerData`` tuples ``(data, kwargs, 'image')``.

    Parameters
    ----------
    path : str or Path
        A .dm3, .dm4, .emd, .ser, .mrc, .hspy, HyperSpy .h5, .tif/.tiff, .msa/.emsa, .npy,
        sparse-scan .csv (x, y, value) or scanning-probe (.sxm, .gwy, .ibw, .sur, .pro) file.

    Returns
    -------
    list of (data, kwargs, layer_type)
        One tuple per image-like dataset in the file. ``data`` is a numpy array, or a dask
        array for files larger than :data:`LAZY_BYTES`.

    Raises
    ------
    ValueError
        When the extension is not supported, or the file is damaged / not of that format.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(
            f"Could not read {p.name}: '{ext or 'no extension'}' files are not "
            f"supported (supported: {known})."
        )
    if not p.is_file():
        raise ValueError(f"Could not read {p}: the file does not exist.")
    module, fmt = FORMATS[ext]
    if ext in (".tif", ".tiff"):
        from napari_microml.io.writer import is_microml_output, read_result_tiff

        if is_microml_output(p):  # rsciio reads none of its description: it came back in px
            return [read_result_tiff(str(p))]
    lazy = p.stat().st_size > LAZY_BYTES
    try:
        if ext == ".csv":
            dicts = _read_scan_values(p)
        elif module is None:
            dicts = _read_numpy(p, lazy)
        elif ext == ".h5" and not _is_hyperspy_h5(p):  # pyNSID; anything else: rsciio's error
            dicts = _read_nsid(p) or _read_rsciio(p, module, lazy)
        else:
            dicts = _read_rsciio(p, module, lazy)
            if ext in (".tif", ".tiff"):
                _imagej_units(p, dicts)
    except Exception as err:  # noqa: BLE001 - turned into one clear sentence
        raise ValueError(
            f"Could not read {p.name}: the file is damaged or not a supported {fmt} file "
            f"({type(err).__name__}: {err})."
        ) from err
    if not dicts:
        raise ValueError(f"Could not read {p.name}: the file holds no datasets.")

    images = [d for d in dicts if np.ndim(d["data"]) >= 2]
    if not images:  # only spectra / 1D data: show them as (1, L) images
        images = [d for d in dicts if np.ndim(d["data"]) == 1]
    if not images:
        raise ValueError(f"Could not read {p.name}: it contains no image or spectrum data.")
    layers = [_to_layer(d, p, i, len(images)) for i, d in enumerate(images)]
    _unique_names(layers)
    return layers


# ------------------------------------------------------------------------------ helpers
# rsciio readers that open a header handle with open() and never close it (ResourceWarning;
# on Windows the file stays locked until garbage collection)
_LEAVE_OPEN = {"rsciio.mrc"}
_OPEN_LOCK = threading.Lock()


def _read_rsciio(p: Path, module: str, lazy: bool) -> list[dict]:
    import importlib

    reader = importlib.import_module(module).file_reader
    if module not in _LEAVE_OPEN:
        return list(reader(str(p), lazy=lazy))
    home = sys.modules[reader.__module__]  # where the reader's own open() is looked up
    opened: list = []

    def tracked(*args, **kwargs):
        fh = builtins.open(*args, **kwargs)
        opened.append(fh)
        return fh

    with _OPEN_LOCK:
        home.open = tracked  # type: ignore[attr-defined]
        try:
            return list(reader(str(p), lazy=lazy))
        finally:
            del home.open
            for fh in opened:  # the data is a memory map of its own; the handle held headers
                fh.close()


# ImageJ/Fiji spellings of a length unit in a TIFF's description (escapes kept as text)
_IMAGEJ_UNITS = {
    "micron": "µm",
    "microns": "µm",
    "um": "µm",
    "\\u00b5m": "µm",
    "a": "Å",
    "\\u00c5": "Å",
    "angstrom": "Å",
    "angstroms": "Å",
    "nm": "nm",
    "pm": "pm",
    "µm": "µm",
}


def _imagej_units(p: Path, dicts: list[dict]) -> None:
    """Give the image axes the unit of an ImageJ/Fiji description where rsciio left none.

    rsciio keeps only "micron": a Fiji TIFF saved in nm, Å or pm opened in pixels.
    """
    import tifffile

    with tifffile.TiffFile(p) as tif:
        unit = (tif.imagej_metadata or {}).get("unit")
    unit = _IMAGEJ_UNITS.get(str(unit).strip().lower()) if unit is not None else None
    if unit is None:
        return
    for d in dicts:
        for a in d.get("axes") or []:
            if a.get("units") in (None, "", "<undefined>") and a.get("name") in ("height", "width"):
                a["units"] = unit


def _nsid_datasets(p: Path) -> list[str]:
    """Paths of the pycroscopy/pyNSID main datasets (those with attached dimension scales)."""
    import h5py

    found: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and "DIMENSION_LIST" in obj.attrs:
            found.append(name)

    try:
        with h5py.File(p, "r") as f:
            f.visititems(visit)
    except Exception:  # noqa: BLE001 - not an HDF5 file we understand
        return []
    return found


def _text(value) -> str:
    return value.decode(errors="ignore") if isinstance(value, bytes) else str(value)


def _read_nsid(p: Path) -> list[dict]:
    """Read pycroscopy (pyNSID) datasets as rsciio-like dicts.

    A non-uniform axis (a BEPS bias waveform) keeps its ``values``.
    """
    import h5py

    out = []
    with h5py.File(p, "r") as f:
        for name in _nsid_datasets(p):
            ds = f[name]
            axes = []
            for i, scales in enumerate(ds.dims):
                ax: dict = {"index_in_array": i, "name": f"axis{i}"}
                if len(scales):
                    dim = scales[0]
                    values = np.asarray(dim[()], float).ravel()
                    ax["name"] = _text(dim.attrs.get("name", dim.name.rsplit("/", 1)[-1]))
                    ax["units"] = _text(dim.attrs.get("units", ""))
                    kind = _text(dim.attrs.get("dimension_type", "")).upper()
                    ax["spectral"] = kind == "SPECTRAL"
                    steps = np.diff(values)
                    uniform = values.size > 1 and np.allclose(steps, steps[0], rtol=1e-6)
                    if uniform and steps[0] > 0:
                        ax["scale"], ax["offset"] = float(steps[0]), float(values[0])
                    elif values.size == ds.shape[i]:
                        ax["values"] = values
                axes.append(ax)
            title = _text(ds.attrs.get("title", "")) or name.split("/")[0]
            out.append(
                {
                    "data": np.asarray(ds[()]),
                    "axes": axes,
                    "metadata": {
                        "General": {"title": title},
                        "Signal": {"signal_type": _text(ds.attrs.get("modality", ""))},
                    },
                    "original_metadata": {
                        k: _text(v) for k, v in ds.attrs.items() if not k.startswith("DIMENSION")
                    },
                }
            )
    return out


def _read_numpy(p: Path, lazy: bool) -> list[dict]:
    data = np.load(p, mmap_mode="r" if lazy else None, allow_pickle=False)
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks="auto")
    return [
        {
            "data": data,
            "axes": [],
            "metadata": {"General": {"title": p.stem}},
            "original_metadata": {},
        }
    ]


def _ureg():
    import pint

    return pint.get_application_registry()


def _ev_per_unit(units: str) -> float | None:
    """EV per ``units`` when they are an energy (keV: 1000), else ``None``."""
    try:
        return float(_ureg().Quantity(1.0, units).to("eV").magnitude)
    except Exception:  # noqa: BLE001 - not an energy (cm^-1, nm, pixel)
        return None


def _nm_per_unit(units: str) -> float | None:
    """Nanometres per ``units`` for a length unit other than nm, else ``None``.

    napari never converts units between layers: a µm file beside an nm one sat 1000× smaller,
    unitless ("Inconsistent units"), and a 4e-8 m step overflowed its sliders.
    """
    if units in ("pixel", "px", "", "nm"):
        return None
    try:
        nm = float(_ureg().Quantity(1.0, units).to("nm").magnitude)
    except Exception:  # noqa: BLE001 - not a length (eV, V, 1/nm)
        return None
    return None if nm == 1.0 else nm


def _clean_units(units: Any) -> str:
    """Return a pint-parsable unit string; ``'pixel'`` when the file gives none."""
    if units is None:
        return "pixel"
    text = str(units).strip()
    if not text or text in ("<undefined>", "Undefined"):
        return "pixel"
    ureg = _ureg()
    for candidate in (text, text.replace("_", ""), text.replace("u", "µ", 1)):
        try:
            ureg.parse_units(candidate)
            return candidate
        except Exception:  # noqa: BLE001
            continue
    return "pixel"


def _is_spectral(ax: dict) -> bool:
    if "spectral" in ax:  # the file says so (pyNSID dimension_type)
        return bool(ax["spectral"])
    units = str(ax.get("units") or "").strip().lower()
    name = str(ax.get("name") or "").strip().lower()
    return units in SPECTRAL_UNITS or any(w in name for w in SPECTRAL_WORDS)


def _plain_scalar(x, default: float) -> float:
    try:
        v = float(np.asarray(x).ravel()[0]) if np.ndim(x) else float(x)
    except Exception:  # noqa: BLE001
        return default
    return v if np.isfinite(v) else default


def _to_layer(d: dict, p: Path, index: int, n: int) -> LayerData:
    data = d["data"]
    if getattr(data, "dtype", None) is not None and data.dtype.names:  # RGB(A) structured
        try:  # the current name; older rsciio has only rgb_tools (deprecated since)
            from rsciio.utils.rgb import rgbx2regular_array
        except ImportError:
            from rsciio.utils.rgb_tools import rgbx2regular_array

        data = rgbx2regular_array(data)
        rgb = True
    else:
        rgb = False
    if np.iscomplexobj(data):
        data = abs(data)
    ndim = data.ndim - (1 if rgb else 0)

    # axes in array order (rsciio gives index_in_array for most plugins, hspy lists in order)
    raw_axes = [dict(a) for a in (d.get("axes") or [])]
    if len(raw_axes) == ndim and all("index_in_array" in a for a in raw_axes):
        raw_axes.sort(key=lambda a: int(a["index_in_array"]))
    if len(raw_axes) != ndim:
        raw_axes = [{} for _ in range(ndim)]
    default_names = ["z", "y", "x"] if ndim == 3 else ["y", "x"] if ndim == 2 else []
    default_names = [f"axis{i}" for i in range(ndim - len(default_names))] + default_names

    axes = []
    unlabelled: dict[str, float] = {}
    file_units: dict[str, list] = {}  # axis -> [unit, scale, offset] as the file gave them
    for i, a in enumerate(raw_axes):
        scale = _plain_scalar(a.get("scale", 1.0), 1.0)
        units = _clean_units(a.get("units"))
        said = None
        if _is_spectral(a) and a.get("values") is None:
            offset = _plain_scalar(a.get("offset", 0.0), 0.0)
            if scale < 0:  # a descending energy axis: flipped, so every tool sees it ascend
                offset, scale = offset + scale * (data.shape[i] - 1), -scale
                data = np.flip(data, i)
            to_ev = _ev_per_unit(units)  # keV/meV: the tools' edge rules and shifts are in eV
            if to_ev is not None and to_ev != 1.0:
                said = [units, scale, offset]
                offset, scale, units = offset * to_ev, scale * to_ev, "eV"
            a = {**a, "offset": offset}
        to_nm = None if _is_spectral(a) else _nm_per_unit(units)
        if to_nm is not None:
            offset = _plain_scalar(a.get("offset", 0.0), 0.0)
            said = [units, scale, offset]
            a = {**a, "offset": offset * to_nm}
            scale, units = scale * to_nm, "nm"
        if scale <= 0:  # unknown calibration (e.g. DE MRC writes -1): fall back to pixels
            scale, units = 1.0, "pixel"
        name = str(a.get("name") or "").strip()
        if not name or name.lower() in ("<undefined>", "undefined", "none"):
            name = default_names[i]
        if said is not None:
            file_units[name] = said
        if units == "pixel" and scale != 1.0 and not _is_spectral(a):
            # a scale without a unit cannot be labelled: a "pixel" axis must count pixels
            unlabelled[name] = scale
            scale = 1.0
            a = {**a, "offset": 0.0}
        axes.append(
            {
                "name": name,
                "scale": scale,
                "offset": _plain_scalar(a.get("offset", 0.0), 0.0),
                "units": units,
                "spectral": _is_spectral(a),
                "values": a.get("values"),
            }
        )

    # 1D spectrum -> (1, L) so it is displayable and ready for (N, L) spectral tools
    if ndim == 1:
        data = data[None]
        axes.insert(
            0,
            {"name": "spectrum", "scale": 1.0, "offset": 0.0, "units": "pixel", "spectral": False},
        )
        ndim = 2

    spectral = [i for i, a in enumerate(axes) if a["spectral"]]
    spectral_axis = None
    if spectral:
        s = spectral[-1]
        if s != ndim - 1:
            if hasattr(data, "compute"):
                import dask.array as da

                data = da.moveaxis(data, s, ndim - 1)
            else:
                data = np.moveaxis(data, s, ndim - 1)
            axes.append(axes.pop(s))
        a = axes[-1]
        spectral_axis = {
            "scale": a["scale"],
            "offset": a["offset"],
            "units": a["units"],
            "name": a["name"],
        }
        if a.get("values") is not None:
            spectral_axis["values"] = [float(v) for v in a["values"]]

    names = [a["name"] for a in axes]
    for i, nm in enumerate(names):  # napari needs unique axis labels
        if names.count(nm) > 1:
            names[i] = f"{nm}{i}"

    md = d.get("metadata") or {}
    title = str(md.get("General", {}).get("title") or "").strip()
    if n == 1:
        name = p.stem
    else:
        name = f"{p.stem} [{title or index}]"
    info = {
        "source_file": str(p),
        "dataset_index": index,
        "title": title,
        "signal_type": str(md.get("Signal", {}).get("signal_type", "") or ""),
        "lazy": hasattr(data, "compute"),
    }
    if spectral_axis is not None:
        info["spectral_axis"] = spectral_axis
    if unlabelled:  # kept for the user to read; never applied as a length
        info["unlabelled_scale"] = unlabelled
    if file_units:  # the layer is in nm; what the file said
        info["file_units"] = file_units
    if d.get("scan"):  # a scanning-probe channel (io.spm): the tools level it as an SPM scan
        info["scan"] = d["scan"]
    kwargs = {
        "name": name,
        "scale": tuple(a["scale"] for a in axes),
        "translate": tuple(a["offset"] for a in axes),
        # a non-uniform axis (a bias waveform) has no step: napari counts its channels
        "units": tuple("pixel" if a.get("values") is not None else a["units"] for a in axes),
        "axis_labels": tuple(names),
        "rgb": rgb,
        "metadata": {
            "napari_microml": info,
            "original": {
                "metadata": md,
                "original_metadata": d.get("original_metadata", {}),
                "axes": d.get("axes", []),
            },
        },
    }
    kwargs.update(d.get("layer") or {})  # io.spm: only the topography shown
    return data, kwargs, "image"


def _unique_names(layers: list[LayerData]) -> None:
    seen: dict[str, int] = {}
    for _, kw, _ in layers:
        base = kw["name"]
        if base in seen:
            seen[base] += 1
            kw["name"] = f"{base} ({seen[base]})"
        else:
            seen[base] = 0
