"""Scanning-probe (STM/AFM) files: Nanonis .sxm, Gwyddion .gwy, Asylum/Igor .ibw, Digital Surf
.sur/.pro.

:func:`file_reader` has rsciio's signature and returns its ``{data, axes, metadata,
original_metadata}`` dictionaries, one per channel, so :mod:`napari_microml.io.reader` turns
them into layers like any electron file. On top of rsciio's keys each dictionary carries

* ``"scan"``: the record kept in ``layer.metadata['napari_microml']['scan']``: ``kind``
  ("spm", which tells the tools to level the frame as a scanning-probe scan), ``format``,
  ``channel``, ``direction`` (forward/backward), ``scan_direction`` (up/down where the file
  says), ``units`` (the layer's values) and ``file_units`` (the file's), and for a scan that
  stopped early ``lines_recorded``/``lines`` and a ``note``;
* ``"layer"``: napari keyword arguments (only the topography visible).

The channels come back topography first, then in the file's order; the napari reader adds them
in reverse, so the forward topography tops the layer list, is shown and is the layer the tools
start on, the other channels hidden below it.

Heights (and every length-valued channel) are given in nm; other channels (current,
amplitude, phase) keep the file's units. Each image is turned upright the way the vendor's
own viewer shows it: row 0 at the top, a backward line read left to right.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# extension -> format name (io.reader's FORMATS points these at this module)
SPM_FORMATS = {
    ".sxm": "Nanonis",
    ".gwy": "Gwyddion",
    ".ibw": "Asylum Research / Igor binary wave",
    ".sur": "Digital Surf",
    ".pro": "Digital Surf profile",
}
# channel names that are the topography (case-insensitive, whole name or its first word)
_TOPOGRAPHY = ("z", "height", "topography", "topo", "zsensor", "heighttrace", "heightretrace")


def file_reader(filename, lazy: bool = False) -> list[dict]:
    """Read every channel of a scanning-probe file, the forward topography first.

    Parameters
    ----------
    filename : str or Path
        A .sxm, .gwy, .ibw, .sur or .pro file.
    lazy : bool
        Ignored: these files are small and read at once.

    Returns
    -------
    list of dict
        rsciio-like dictionaries plus ``scan`` and ``layer`` (see the module's docstring).

    Raises
    ------
    ValueError
        When the file is not of the format its extension names, or holds no image.
    """
    p = Path(filename)
    ext = p.suffix.lower()
    readers = {
        ".sxm": _read_sxm,
        ".gwy": _read_gwy,
        ".ibw": _read_ibw,
        ".sur": _read_sur,
        ".pro": _read_sur,
    }
    if ext not in readers:
        raise ValueError(f"{p.name} is not a scanning-probe file ({', '.join(SPM_FORMATS)}).")
    channels = readers[ext](p)
    if not channels:
        raise ValueError(f"{p.name} holds no image channel.")
    channels.sort(key=lambda d: not _is_topography(d["scan"]["channel"]))  # stable: file order
    for i, d in enumerate(channels):
        d["layer"] = {"visible": i == 0}
    return channels


# ---------------------------------------------------------------------------- common
def _is_topography(name: str) -> bool:
    words = re.split(r"[\s_(]+", name.strip().lower())
    return name.strip().lower() in _TOPOGRAPHY or (bool(words) and words[0] in _TOPOGRAPHY)


def _nm_per(units: str) -> float | None:
    """Nanometres per ``units`` when they are a length (1.0 for nm), else None."""
    from napari_microml.io.reader import _nm_per_unit

    if units.strip() == "nm":
        return 1.0
    return _nm_per_unit(units.strip()) if units.strip() else None


def _stopped_lines(data: np.ndarray, first_line_at_top: bool) -> tuple[np.ndarray, int, int]:
    """Crop the lines a stopped scan never recorded (all NaN) and the one it was recording.

    The unrecorded lines are those at the end of the image that are entirely NaN; at both ends,
    ``first_line_at_top`` tells where the scan began. Lines missing inside the scan stay NaN.
    Returns the cropped image, the number of lines kept and the crop's first row.
    """
    h = data.shape[0]
    empty = ~np.isfinite(data).any(axis=1)
    if not empty.any() or empty.all() or not (empty[0] or empty[-1]):
        return data, h, 0
    began_at_bottom = not first_line_at_top if empty[0] == empty[-1] else bool(empty[0])
    in_order = empty[::-1] if began_at_bottom else empty
    n = h - int(np.argmax(~in_order[::-1]))  # lines up to the last one holding a number
    last = data[h - n] if began_at_bottom else data[n - 1]
    if not np.isfinite(last).all():  # the line it was recording when it stopped
        n -= 1
    if n <= 0:
        return data, h, 0
    return (data[h - n :], n, h - n) if began_at_bottom else (data[:n], n, 0)


def _channel(
    data: np.ndarray,
    *,
    fmt: str,
    channel: str,
    direction: str,
    units: str,
    size: tuple[float, float],
    xy_units: str,
    offset: tuple[float, float] = (0.0, 0.0),
    scan_direction: str | None = None,
    first_line_at_top: bool = True,
    extra: dict | None = None,
) -> dict:
    """One upright channel as an rsciio-like dictionary, values in nm where they are lengths.

    ``size`` is the (height, width) of the frame in ``xy_units``; ``offset`` its top-left.
    """
    data = np.asarray(data, np.float32)
    h, w = data.shape
    scan: dict = {"kind": "spm", "format": fmt, "channel": channel, "direction": direction}
    if scan_direction:
        scan["scan_direction"] = scan_direction
    to_nm = _nm_per(units)
    if to_nm is not None:
        scan["file_units"], scan["units"] = units, "nm"
        if to_nm != 1.0:
            data = data * np.float32(to_nm)
    else:
        scan["file_units"] = scan["units"] = units
    lines = h
    data, kept, top = _stopped_lines(data, first_line_at_top)
    if kept < lines:
        scan["lines_recorded"], scan["lines"] = kept, lines
        scan["note"] = f"the scan stopped at line {kept} of {lines}: the image holds those {kept}"
    dy, dx = size[0] / h, size[1] / w
    axes = [
        {
            "name": "y",
            "size": data.shape[0],
            "index_in_array": 0,
            "scale": dy,
            "offset": offset[0] + top * dy,
            "units": xy_units,
        },
        {
            "name": "x",
            "size": w,
            "index_in_array": 1,
            "scale": dx,
            "offset": offset[1],
            "units": xy_units,
        },
    ]
    title = f"{channel} ({direction})" if direction else channel
    return {
        "data": np.ascontiguousarray(data),
        "axes": axes,
        "metadata": {
            "General": {"title": title},
            "Signal": {"signal_type": "scanning probe", "quantity": f"{channel} ({scan['units']})"},
        },
        "original_metadata": extra or {},
        "scan": scan,
    }


# ---------------------------------------------------------------------------- Nanonis
def parse_sxm_header(text: str) -> dict[str, str]:
    """The ``:KEY:`` blocks of a Nanonis .sxm header, each key's lines joined (stripped).

    Parameters
    ----------
    text : str
        The header, up to ``:SCANIT_END:``.

    Returns
    -------
    dict
        Key (without colons) -> its value's lines, newline-joined.
    """
    out: dict[str, list[str]] = {}
    key = None
    for line in text.splitlines():
        m = re.fullmatch(r":([^:]+(?::[^:]+)*):", line.strip())
        if m and line.startswith(":"):
            key = m.group(1)
            out[key] = []
        elif key is not None:
            out[key].append(line.rstrip("\r"))
    return {k: "\n".join(v).strip("\n") for k, v in out.items()}


def _read_sxm(p: Path) -> list[dict]:
    raw = p.read_bytes()
    end = raw.find(b":SCANIT_END:")
    start = raw.find(b"\x1a\x04", end) if end >= 0 else -1
    if end < 0 or start < 0:
        raise ValueError("no :SCANIT_END: header end followed by the \\x1a\\x04 data mark")
    head = parse_sxm_header(raw[:end].decode("latin-1"))
    try:
        nx, ny = (int(float(v)) for v in head["SCAN_PIXELS"].split()[:2])
        width, height = (float(v) for v in head["SCAN_RANGE"].split()[:2])
        info = [line.split("\t") for line in head["DATA_INFO"].splitlines()]
    except (KeyError, ValueError) as err:
        raise ValueError(f"its header lacks SCAN_PIXELS, SCAN_RANGE or DATA_INFO ({err})") from err
    info = [[c.strip() for c in row if c.strip()] for row in info]
    columns, rows = [c.lower() for c in info[0]], [r for r in info[1:] if r]
    scan_type = head.get("SCANIT_TYPE", "FLOAT MSBFIRST").upper()
    dtype = ">f4" if "MSBFIRST" in scan_type else "<f4"
    if "FLOAT" not in scan_type:
        raise ValueError(f"data type {scan_type.split()[0]} is not float32")
    offset_xy = [float(v) for v in head.get("SCAN_OFFSET", "0 0").split()[:2]]
    scan_dir = head.get("SCAN_DIR", "up").strip().lower() or "up"
    planes: list[tuple[str, str, str]] = []
    for r in rows:
        rec = dict(zip(columns, r, strict=False))
        recorded = rec.get("direction", "both").lower()  # both: forward, then backward
        name, unit = rec.get("name", "channel"), rec.get("unit", "")
        for direction in ("forward", "backward"):
            if recorded in ("both", direction):
                planes.append((name, unit, direction))
    want = len(planes) * nx * ny
    data = np.frombuffer(raw, dtype, count=min(want, (len(raw) - start - 2) // 4), offset=start + 2)
    if data.size < want:
        raise ValueError(
            f"it holds {data.size} values where its header announces {len(planes)} channels "
            f"of {nx} x {ny}"
        )
    # the frame's top-left in the file's lengths: the centre (SCAN_OFFSET) minus half the range
    top_left = (offset_xy[1] + height / 2, offset_xy[0] - width / 2)
    out = []
    for k, (name, unit, direction) in enumerate(planes):
        img = data[k * nx * ny : (k + 1) * nx * ny].reshape(ny, nx).astype(np.float32)
        if direction == "backward":  # recorded right to left
            img = img[:, ::-1]
        if scan_dir == "up":  # the first line recorded is the bottom one
            img = img[::-1]
        out.append(
            _channel(
                img,
                fmt="Nanonis",
                channel=name,
                direction=direction,
                units=unit,
                size=(height, width),
                xy_units="m",
                offset=(-top_left[0], top_left[1]),
                scan_direction=scan_dir,
                first_line_at_top=scan_dir != "up",
                extra={"header": head},
            )
        )
    return out


# ---------------------------------------------------------------------------- Gwyddion
def _read_gwy(p: Path) -> list[dict]:
    import gwyfile

    try:
        obj = gwyfile.load(str(p))
    except Exception as err:  # noqa: BLE001 - gwyfile raises bare exceptions on foreign files
        raise ValueError(f"not a Gwyddion file ({err})") from err
    ids = sorted(int(m.group(1)) for k in obj.keys() if (m := re.fullmatch(r"/(\d+)/data", str(k))))
    out = []
    for i in ids:
        field = obj[f"/{i}/data"]
        title = str(obj.get(f"/{i}/data/title", f"channel {i}"))
        xy = field.get("si_unit_xy")
        z = field.get("si_unit_z")
        arr = np.asarray(field.data, np.float64)
        out.append(
            _channel(
                arr,
                fmt="Gwyddion",
                channel=title,
                direction=_direction_from_name(title),
                units=str(z["unitstr"]) if z is not None else "",
                size=(
                    float(field.get("yreal", arr.shape[0])),
                    float(field.get("xreal", arr.shape[1])),
                ),
                xy_units=str(xy["unitstr"]) if xy is not None else "",
                offset=(float(field.get("yoff", 0.0)), float(field.get("xoff", 0.0))),
                extra={"channel_id": i},
            )
        )
    return out


def _direction_from_name(name: str) -> str:
    low = name.lower()
    if "retrace" in low or "backward" in low or "bwd" in low or "<-" in low:
        return "backward"
    if "trace" in low or "forward" in low or "fwd" in low or "->" in low:
        return "forward"
    return ""


# ---------------------------------------------------------------------------- Igor / Asylum
def _text(b) -> str:
    if isinstance(b, (bytes, bytearray)):
        return bytes(b).split(b"\x00")[0].decode("latin-1").strip()
    if isinstance(b, np.ndarray):
        return _text(b.tobytes())
    return str(b).strip()


def parse_asylum_note(note: str) -> dict[str, str]:
    """An Asylum Research wave note (``Key: value`` lines) as a dictionary.

    Parameters
    ----------
    note : str

    Returns
    -------
    dict
    """
    out = {}
    for line in note.replace("\r", "\n").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _read_ibw(p: Path) -> list[dict]:
    from igor2 import binarywave

    try:
        wave = binarywave.load(str(p))["wave"]
    except Exception as err:  # noqa: BLE001 - igor2 raises bare struct/value errors
        raise ValueError(f"not an Igor binary wave ({type(err).__name__}: {err})") from err
    header = wave["wave_header"]
    values = np.asarray(wave["wData"])
    if values.ndim < 2 or values.dtype.kind not in "fiu":
        raise ValueError(f"the wave is {values.ndim}-dimensional {values.dtype}, not an image")
    if values.ndim == 2:
        values = values[:, :, None]
    nx, ny, nch = values.shape[:3]
    step = [float(v) for v in header["sfA"][:2]]
    start = [float(v) for v in header["sfB"][:2]]
    dim_units = [_text(u) for u in header["dimUnits"][:2]]
    ext_dims = wave.get("dimension_units") or []
    if not dim_units[0] and ext_dims:
        dim_units = [_text(u) for u in ext_dims[:2]] + [""] * 2
    xy_units = dim_units[0] or dim_units[1]
    data_units = _text(wave.get("data_units") or b"") or _text(header["dataUnits"])
    labels = wave.get("labels") or []
    names = [_text(x) for x in labels[2][1:]] if len(labels) > 2 else []
    note = parse_asylum_note(_text(wave.get("note") or b""))
    out = []
    for c in range(nch):
        name = names[c] if c < len(names) and names[c] else (_text(header["bname"]) or "channel")
        unit = data_units
        if not unit and any(w in name.lower() for w in ("height", "zsensor")):
            unit = "m"  # Asylum writes every height in metres and leaves the unit blank
        # Igor draws dimension 1 upwards: its first row is the bottom of the image
        img = np.asarray(values[:, :, c], np.float64).T[::-1]
        out.append(
            _channel(
                img,
                fmt="Asylum Research / Igor",
                channel=name,
                direction=_direction_from_name(name),
                units=unit,
                size=(abs(step[1]) * ny, abs(step[0]) * nx),
                xy_units=xy_units,
                offset=(start[1], start[0]),
                scan_direction=_asylum_direction(note),
                first_line_at_top=False,
                extra={"note": note},
            )
        )
    return out


def _asylum_direction(note: dict[str, str]) -> str | None:
    if "ScanDown" not in note:
        return None
    return "down" if note["ScanDown"].strip() not in ("0", "") else "up"


# ---------------------------------------------------------------------------- Digital Surf
def _read_sur(p: Path) -> list[dict]:
    from rsciio.digitalsurf import file_reader as sur_reader

    out = []
    for d in sur_reader(str(p)):
        data = np.asarray(d["data"])
        if data.ndim == 1:
            data = data[None]
        if data.ndim != 2:
            continue  # a spectrum map or series: not a scanning-probe image
        axes = sorted(d.get("axes") or [], key=lambda a: a.get("index_in_array", 0))
        q = str(d.get("metadata", {}).get("Signal", {}).get("quantity", ""))
        m = re.fullmatch(r"\s*(.*?)\s*\((.*)\)\s*", q)
        name, unit = (m.group(1), m.group(2)) if m else (q or "Height", "")
        none: dict = {"scale": 1.0, "offset": 0.0, "units": ""}
        ay: dict = axes[-2] if len(axes) >= 2 else none
        ax: dict = axes[-1] if axes else none
        out.append(
            _channel(
                data,
                fmt="Digital Surf",
                channel=name or "Height",
                direction="",
                units=unit,
                size=(float(ay["scale"]) * data.shape[0], float(ax["scale"]) * data.shape[1]),
                xy_units=str(ax.get("units") or ""),
                offset=(float(ay.get("offset", 0.0)), float(ax.get("offset", 0.0))),
                extra=d.get("original_metadata", {}),
            )
        )
    return out
