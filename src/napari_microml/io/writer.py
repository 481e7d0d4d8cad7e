"""npe2 writers: points → CSV, labels → TIFF, several layers → a zarr results bundle.

Every output carries physical units and the provenance recorded in
``metadata['napari_microml']`` (see :mod:`napari_microml.runtime.provenance`).

* :func:`write_points_csv` columns: ``frame`` (3D points only), ``row_px``, ``col_px``,
  ``y_<unit>``, ``x_<unit>`` (``pixel * scale + translate``; left out where that is the pixel
  itself: an uncalibrated image), then every feature column.
  A ``<file>.json`` sidecar holds scale, translate, units, axis labels and provenance.
* :func:`write_labels_tiff`: int32 TIFF, a JSON description (provenance, scale, units).
* :func:`write_image_tiff`: a result map (completed scan, uncertainty, shift map) as a TIFF in
  the map's own dtype, with the same JSON description.
* :func:`write_defects_csv`: the per-defect table, preceded by ``# `` lines (counts per class,
  image, pixel size, provenance); the one writer of that format (table dock and CLI).
* :func:`is_microml_output`: whether a file was written by these writers (so batch runs never
  read an earlier run's results back as inputs).
* :func:`write_bundle`: a zarr group, one array per layer, attrs hold layer type, scale,
  translate, units, axis labels, features (JSON columns) and provenance.

Every writer writes into a hidden sibling and moves it into place when complete
(:func:`staged`): an error part-way leaves the user's earlier file as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from napari_microml.runtime.provenance import KEY, json_safe

BUNDLE_FORMAT = "napari-microml-bundle/1"


# ------------------------------------------------------------------------------ helpers
def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged(path: str | Path) -> Iterator[str]:
    """Yield a hidden sibling of ``path`` to write into; it replaces ``path`` only when the block
    ends without an error, so a failed or interrupted write never leaves a half-written file
    (or a half-emptied folder) where the user's earlier one was."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.stem}.partial-{os.getpid()}{dest.suffix}")
    _remove(tmp)
    try:
        yield str(tmp)
    except BaseException:
        _remove(tmp)
        raise
    if dest.exists() and (dest.is_dir() or tmp.is_dir()):  # rename cannot replace a folder
        old = dest.with_name(f".{dest.stem}.old-{os.getpid()}{dest.suffix}")
        _remove(old)
        os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        _remove(old)
    else:
        os.replace(tmp, dest)


def unit_str(unit: Any) -> str:
    """Short unit text: pint ``Unit('nanometer')`` → ``'nm'``; ``None`` → ``'pixel'``."""
    if unit is None:
        return "pixel"
    if isinstance(unit, str):
        text = unit.strip()
        if not text:
            return "pixel"
        try:
            import pint

            return format(pint.get_application_registry().Unit(text), "~") or text
        except Exception:  # noqa: BLE001
            return text
    try:
        return format(unit, "~") or "pixel"
    except Exception:  # noqa: BLE001
        return str(unit)


def _per_axis(values, ndim: int, default) -> list:
    if values is None:
        return [default] * ndim
    if isinstance(values, (str, bytes)) or np.ndim(values) == 0:
        return [values] * ndim
    values = list(values)
    if len(values) < ndim:
        values = [default] * (ndim - len(values)) + values
    return values[-ndim:]


def _geometry(attributes: dict, ndim: int) -> tuple[list, list, list]:
    attributes = attributes or {}
    scale = [float(s) for s in _per_axis(attributes.get("scale"), ndim, 1.0)]
    translate = [float(t) for t in _per_axis(attributes.get("translate"), ndim, 0.0)]
    units = [unit_str(u) for u in _per_axis(attributes.get("units"), ndim, None)]
    return scale, translate, units


def _description(fmt: str, attributes: dict, ndim: int) -> dict:
    """A result file's JSON (TIFF description, points sidecar): format, geometry, provenance."""
    scale, translate, units = _geometry(attributes, ndim)
    out = {
        "format": fmt,
        "name": (attributes or {}).get("name"),
        "scale": scale,
        "translate": translate,
        "units": units,
        "axis_labels": [str(a) for a in _per_axis((attributes or {}).get("axis_labels"), ndim, "")],
        KEY: _provenance(attributes),
    }
    if (attributes or {}).get("column_units"):  # what each feature column is measured in
        out["column_units"] = dict(attributes["column_units"])
    return out


def _features_frame(attributes: dict, n: int):
    import pandas as pd

    feats = (attributes or {}).get("features")
    if feats is None or len(feats) == 0:
        feats = (attributes or {}).get("properties") or {}
    df = pd.DataFrame(feats) if not isinstance(feats, pd.DataFrame) else feats.copy()
    if len(df.columns) and len(df) != n:
        raise ValueError(f"The layer has {n} points but {len(df)} feature rows.")
    return df.reset_index(drop=True)


def _safe(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", text).strip("_") or "layer"


def _provenance(attributes: dict) -> dict | None:
    md = (attributes or {}).get("metadata") or {}
    prov = md.get(KEY)
    return json_safe(prov) if prov else None


# ------------------------------------------------------------------------------- points
def write_points_csv(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Points layer to CSV (npe2 single-layer writer).

    Parameters
    ----------
    path : str
        Output ``.csv`` file.
    data : (N, D) array
        Point coordinates in pixels, ``(row, col)`` or ``(frame, row, col)``.
    attributes : dict
        Layer state: ``scale``, ``translate``, ``units``, ``features``, ``metadata``; optional
        ``column_units`` ({column: unit}) goes into the sidecar.

    Returns
    -------
    list of str
        The CSV path and its ``.json`` sidecar path.
    """
    import pandas as pd

    pts = np.asarray(data, dtype=float)
    if pts.ndim != 2 or pts.shape[1] < 2:
        if pts.size == 0:
            pts = pts.reshape(0, 2)
        else:
            raise ValueError(f"Points must be an (N, 2) or (N, 3) array, got {pts.shape}.")
    n, d = pts.shape
    scale, translate, units = _geometry(attributes, d)
    cols: dict[str, Any] = {}
    for i in range(d - 2):
        name = "frame" if d == 3 else f"dim{i}"
        cols[name] = (
            np.rint(pts[:, i]).astype(int)
            if np.allclose(pts[:, i], np.rint(pts[:, i]))
            else pts[:, i]
        )
    cols["row_px"] = pts[:, -2]
    cols["col_px"] = pts[:, -1]
    for ax, lab in ((-2, "y"), (-1, "x")):
        if units[ax] == "pixel" and scale[ax] == 1.0 and translate[ax] == 0.0:
            continue  # y_pixel would repeat row_px
        cols[f"{lab}_{units[ax]}"] = pts[:, ax] * scale[ax] + translate[ax]
    table = pd.DataFrame(cols)
    feats = _features_frame(attributes, n)
    for c in feats.columns:
        name = str(c) if str(c) not in table.columns else f"feature_{c}"
        table[name] = feats[c].to_numpy()
    path = str(path)
    side = _description("napari-microml-points/1", attributes, d)
    with staged(path) as tmp_csv, staged(path + ".json") as tmp_json:
        table.to_csv(tmp_csv, index=False)
        Path(tmp_json).write_text(json.dumps(side, indent=1))
    return [path, path + ".json"]


def _is_unit(text: str) -> bool:
    if text == "pixel":
        return True
    try:
        import pint

        pint.get_application_registry().parse_units(text)
    except Exception:  # noqa: BLE001 - not a unit pint knows
        return False
    return True


def read_points_csv(path: str) -> tuple:
    """Read a CSV written by :func:`write_points_csv` back into napari ``LayerData``.

    Returns ``(data (N, D) float, kwargs, 'points')``; kwargs hold ``features``, ``scale``,
    ``translate``, ``units`` and provenance metadata (from the ``.json`` sidecar when present,
    otherwise fitted from the physical columns).
    """
    import pandas as pd

    path = str(path)
    table = pd.read_csv(path)
    if not {"row_px", "col_px"} <= set(table.columns):
        raise ValueError(
            f"{Path(path).name} has no row_px/col_px columns; not a microml points CSV."
        )
    lead = [c for c in table.columns if c == "frame" or re.fullmatch(r"dim\d+", str(c))]
    coord_cols = [*lead, "row_px", "col_px"]
    # y_<unit>/x_<unit> follow col_px (each left out when it would repeat the pixel column)
    phys: list[str] = []
    for col in table.columns[table.columns.get_loc("col_px") + 1 :][:2]:
        m = re.fullmatch(r"([yx])_(.+)", str(col))
        if m is None or any(p[0] == m.group(1) for p in phys) or not _is_unit(m.group(2)):
            break  # a feature such as x_score
        phys.append(str(col))
    data = table[coord_cols].to_numpy(dtype=float)
    feats = table.drop(columns=coord_cols + phys).reset_index(drop=True)
    d = data.shape[1]
    kwargs: dict[str, Any] = {"features": feats, "name": Path(path).stem}
    side_path = Path(path + ".json")
    if side_path.is_file():
        side = json.loads(side_path.read_text())
        kwargs.update(scale=side["scale"], translate=side["translate"], units=side["units"])
        if side.get("name"):
            kwargs["name"] = side["name"]
        if any(side.get("axis_labels") or []) and len(set(side["axis_labels"])) == d:
            kwargs["axis_labels"] = side["axis_labels"]
        if side.get(KEY):
            kwargs["metadata"] = {KEY: side[KEY]}
    else:  # fit pixel -> physical from the columns
        scale, translate, units = [1.0] * d, [0.0] * d, ["pixel"] * d
        for col in phys:
            ax = -2 if str(col).startswith("y_") else -1
            units[ax] = str(col)[2:]
            px = table[coord_cols[ax]].to_numpy(float)
            if len(px) >= 2 and np.ptp(px) > 0:
                s, t = np.polyfit(px, table[col].to_numpy(float), 1)
                scale[ax], translate[ax] = float(s), float(t)
        kwargs.update(scale=scale, translate=translate, units=units)
    return data, kwargs, "points"


# ------------------------------------------------------------------------------- labels
def write_labels_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer as an int32 TIFF with a JSON description (npe2 writer).

    The description holds ``{"napari_microml": provenance, "scale", "translate", "units",
    "axis_labels", "name"}``; read it with :func:`read_labels_tiff`.
    """
    import tifffile

    arr = np.asarray(data)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"Labels must be integers, got {arr.dtype}.")
    if arr.size and (arr.max() > np.iinfo(np.int32).max or arr.min() < np.iinfo(np.int32).min):
        raise ValueError("Label values do not fit in int32.")
    desc = _description("napari-microml-labels/1", attributes, arr.ndim)
    path = str(path)
    with staged(path) as tmp:
        tifffile.imwrite(tmp, arr.astype(np.int32), description=json.dumps(desc), metadata=None)
    return [path]


def write_image_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a result map as a TIFF in its own dtype (float64 stays float64) with the JSON
    description of :func:`write_labels_tiff` (format ``napari-microml-image/1``)."""
    import tifffile

    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"A result map must hold numbers, got {arr.dtype}.")
    desc = _description("napari-microml-image/1", attributes, arr.ndim)
    path = str(path)
    with staged(path) as tmp:
        tifffile.imwrite(tmp, arr, description=json.dumps(desc), metadata=None)
    return [path]


def is_microml_output(path) -> bool:
    """True for a TIFF written by this module (its description names a napari-microml format
    or carries napari-microml provenance); False for anything else, unreadable files included."""
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff") or not p.is_file():
        return False
    try:
        import tifffile

        with tifffile.TiffFile(str(p)) as tif:
            desc = json.loads(tif.pages[0].aspage().description or "{}")
    except Exception:  # noqa: BLE001 - not ours, or not readable: the reader will say why
        return False
    return isinstance(desc, dict) and (
        str(desc.get("format", "")).startswith("napari-microml") or KEY in desc
    )


def read_labels_tiff(path: str) -> tuple:
    """Read a TIFF written by :func:`write_labels_tiff` → ``(labels int32, kwargs, 'labels')``."""
    data, kwargs, _ = read_result_tiff(path)
    return data.astype(np.int32, copy=False), kwargs, "labels"


def _lead_axes(values: list, ndim: int, key: str) -> list:
    """A geometry list for ``ndim`` axes: TIFF gives a 1D map (a line scan's shifts) back as one
    row, so the missing leading axis copies the first one (square pixels) at offset 0."""
    if not values or len(values) >= ndim:
        return values
    pad = 0.0 if key == "translate" else values[0]
    return [pad] * (ndim - len(values)) + values


def read_result_tiff(path: str) -> tuple:
    """Read a TIFF written by :func:`write_labels_tiff` or :func:`write_image_tiff` with the
    geometry of its description → ``(data, kwargs, 'labels' or 'image')``."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        data = tif.asarray()
        try:
            desc = json.loads(tif.pages[0].aspage().description or "{}")
        except json.JSONDecodeError:
            desc = {}
    desc = desc if isinstance(desc, dict) else {}
    kwargs: dict[str, Any] = {"name": desc.get("name") or Path(path).stem}
    for k in ("scale", "translate", "units"):
        if k in desc:
            kwargs[k] = _lead_axes(list(desc[k]), data.ndim, k)
    labels = [str(a) for a in desc.get("axis_labels") or []]
    if all(labels) and len(set(labels)) == len(labels) == data.ndim:
        kwargs["axis_labels"] = labels
    if desc.get(KEY):
        kwargs["metadata"] = {KEY: desc[KEY]}
    kind = "labels" if str(desc.get("format", "")).startswith("napari-microml-labels") else "image"
    return data, kwargs, kind


# ------------------------------------------------------------------------------ defects
def write_defects_csv(
    path,
    table,
    counts=None,
    *,
    provenance: dict | None = None,
    image: str | None = None,
    pixel_size: float | None = None,
) -> str:
    """Write the per-defect table to CSV, preceded by ``# `` lines with the counts per class,
    the image, the pixel size (nm/px) and the provenance as one JSON line.

    Read it back with ``pandas.read_csv(path, comment="#")``.
    """
    lines = [
        "# napari-microml defect table",
        f"# image: {image if image is not None else 'unknown'}",
        f"# pixel_size_nm: {pixel_size if pixel_size else 'unknown (positions in px)'}",
    ]
    if counts is not None:
        for _, c in counts.iterrows():
            dens = c.get("density_per_nm2", np.nan)
            extra = f", {dens:.4g} per nm²" if np.isfinite(dens) else ""
            lines.append(f"# count {c['class']}: {int(c['count'])}{extra}")
    lines.append("# provenance: " + json.dumps(json_safe(provenance or {}), ensure_ascii=False))
    with staged(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(lines) + "\n")
        table.to_csv(fh, index=False)
    return str(path)


# ------------------------------------------------------------------------------- bundle
def write_bundle(path: str, layer_data: list) -> list[str]:
    """Write several layers to one zarr group (npe2 multi-layer writer).

    Parameters
    ----------
    path : str
        Output folder ending in ``.zarr``.
    layer_data : list of (data, attributes, layer_type)

    Returns
    -------
    list of str
        ``[path]``.
    """
    import zarr

    path = str(path)
    with staged(path) as tmp:
        _write_bundle_group(zarr.open_group(tmp, mode="w"), layer_data)
    return [path]


def _write_bundle_group(root: Any, layer_data: list) -> list[str]:
    from napari_microml.runtime.provenance import make_provenance

    names: list[str] = []
    for i, item in enumerate(layer_data):
        data, attributes, layer_type = item
        attributes = attributes or {}
        arr = np.asarray(data)
        if arr.dtype == object:
            raise ValueError(
                f"Layer {attributes.get('name', i)!r} ({layer_type}) has "
                "ragged/object data that a bundle cannot store."
            )
        key = _safe(str(attributes.get("name") or f"layer{i}"))
        while key in names:
            key = f"{key}_{i}"
        names.append(key)
        ndim = arr.shape[1] if layer_type == "points" and arr.ndim == 2 else arr.ndim
        if layer_type == "points" and arr.size == 0:
            arr = arr.reshape(0, max(ndim, 2)).astype(float)
            ndim = arr.shape[1]
        scale, translate, units = _geometry(attributes, ndim)
        feats = _features_frame(attributes, len(arr)) if layer_type == "points" else None
        if feats is None and attributes.get("features") is not None:
            import pandas as pd

            feats = pd.DataFrame(attributes["features"])
        z = root.create_array(key, data=arr)
        z.attrs.update(
            {
                "layer_type": str(layer_type),
                "name": str(attributes.get("name") or key),
                "scale": scale,
                "translate": translate,
                "units": units,
                "axis_labels": [str(a) for a in _per_axis(attributes.get("axis_labels"), ndim, "")],
                "features": {str(c): json_safe(feats[c].tolist()) for c in feats.columns}
                if feats is not None
                else {},
                "feature_dtypes": {str(c): str(feats[c].dtype) for c in feats.columns}
                if feats is not None
                else {},
                KEY: _provenance(attributes),
            }
        )
    root.attrs.update(
        {
            "format": BUNDLE_FORMAT,
            "layers": names,
            KEY: make_provenance("write_bundle", parameters={"layers": names}),
        }
    )
    return names


def read_bundle(path: str) -> list[tuple]:
    """Read a bundle written by :func:`write_bundle` back into napari ``LayerData`` tuples.

    Each layer's ``metadata`` holds ``napari_microml`` (the layer's provenance) and
    ``bundle`` (the bundle's own provenance record).
    """
    import pandas as pd
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        attrs: dict[str, Any] = dict(root.attrs)
    except Exception as err:  # noqa: BLE001
        raise ValueError(
            f"Could not read {Path(path).name}: not a zarr results bundle ({err})."
        ) from err
    if attrs.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{Path(path).name} is not a napari-microml results bundle.")
    out = []
    for key in attrs.get("layers", []):
        z = root[key]
        if not isinstance(z, zarr.Array):
            raise ValueError(f"{Path(path).name} is damaged: layer {key!r} holds no array.")
        a: dict[str, Any] = dict(z.attrs)
        data = np.asarray(z[...])
        kwargs: dict[str, Any] = {
            "name": a.get("name", key),
            "scale": a["scale"],
            "translate": a["translate"],
            "units": a["units"],
            "metadata": {KEY: a.get(KEY), "bundle": attrs.get(KEY)},
        }
        labels = a.get("axis_labels") or []
        if all(labels) and len(set(labels)) == len(labels) and labels:
            kwargs["axis_labels"] = labels
        if a.get("features"):
            feats = pd.DataFrame(a["features"])
            for c, dt in (a.get("feature_dtypes") or {}).items():
                try:
                    feats[c] = feats[c].astype(dt)
                except Exception:  # noqa: BLE001
                    pass
            kwargs["features"] = feats
        out.append((data, kwargs, a["layer_type"]))
    return out
