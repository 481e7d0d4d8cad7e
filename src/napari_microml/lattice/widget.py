"""Lattice analysis dock widget: columns (Points) + image → sublattices, strain, rotation,
polarisation and atom counts, as features, heatmaps, arrows and a plot dock."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSlider,
    Label,
    PushButton,
    SpinBox,
)

from napari_microml.lattice.analyze import column_units
from napari_microml.runtime.contrast import CONTRASTS
from napari_microml.runtime.level import scan_kind
from napari_microml.runtime.provenance import KEY
from napari_microml.runtime.widget import (
    Job,
    Refused,
    ToolWidget,
    add_pixel_size_row,
    follow_opened_images,
    layer_picker,
    name_colour_bar,
    physical_kwargs,
    pick,
    pixel_size_nm,
)
from napari_microml.runtime.workers import Progress

if TYPE_CHECKING:
    from napari_microml.atoms.finder import AtomsResult

MAPS = ("exx", "eyy", "exy", "rotation")
# shown in the units the status line speaks: strain fractions as %, rotation radians as degrees
MAP_UNITS = {
    "exx": (100.0, "%"),
    "eyy": (100.0, "%"),
    "exy": (100.0, "%"),
    "rotation": (180 / np.pi, "°"),
}


def nice_limit(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above ``value`` (> 0): colour-bar ends that
    get tick labels."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-9):
            return float(step * power)
    return float(10 * power)


FEATURES = (
    "sublattice",
    "exx",
    "eyy",
    "exy",
    "rotation",
    "d_abs",
    "count",
    "cross_section",
    "exx_std",
    "eyy_std",
    "exy_std",
    "rotation_std",
    "d_row",
    "d_col",
    "d_std",
)
SUBLATTICE_COLOURS = ("#ff3b30", "#2f80ed", "#27ae60", "#f2c94c", "#9b51e0", "#56ccf2")


def finder_contrast(points, image) -> str | None:
    """'bright' or 'dark': the contrast the Atom finder used when it found ``points`` on
    ``image`` (from the layer's provenance), else None (the columns came from elsewhere)."""
    record = (points.metadata.get(KEY) if isinstance(points.metadata, dict) else None) or {}
    if image is None or record.get("input_layer") != image.name:
        return None
    contrast = (record.get("parameters") or {}).get("contrast")
    return contrast if contrast in ("bright", "dark") else None


def diverging():
    """Blue – white – red, for values centred on 0."""
    from napari.utils.colormaps import Colormap

    return Colormap(["#2166ac", "#f7f7f7", "#b2182b"], name="microml diverging")


@dataclass
class LatticeRun:
    """What the worker hands back to the GUI thread."""

    lattice: object
    counts: object | None
    maps: dict
    step: int
    profile: tuple | None = None
    notes: list = field(default_factory=list)
    device: str = "CPU (NumPy/SciPy)"
    found: AtomsResult | None = None  # the Atom finder's result when Run found the columns itself


class LatticeWidget(ToolWidget):
    tool_name = "lattice_analysis"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.image_layer = layer_picker(napari.layers.Image, label="Image")
        self.points_layer = layer_picker(
            napari.layers.Points, label="Columns", options={"nullable": True}
        )
        self.points_layer.tooltip = (
            "The atom columns: a Points layer (the Atom finder's '<image> atoms', edited or not; "
            "picked for you when the image has one). Empty: Run finds them with the Atom finder "
            "and adds them as '<image> atoms'"
        )
        self.shapes_layer = layer_picker(
            napari.layers.Shapes, label="Region / line", options={"nullable": True}
        )
        self.shapes_layer.tooltip = (
            "Optional: rectangles or polygons mark the unstrained "
            "reference; a line or path gives a profile in the plot dock"
        )
        self.contrast = ComboBox(
            label="Columns are",
            choices=list(CONTRASTS),
            value="auto",
            tooltip="bright: HAADF/ADF (sublattice 0 = brightest); dark: ABF/BF "
            "(sublattice 0 = darkest; no atom counting); auto: what the Atom finder used "
            "for these columns, else the image at the columns against its median",
        )
        self.shells = ComboBox(
            label="Strain fit over",
            choices=["auto", "3×3 cells", "5×5 cells"],
            value="auto",
            tooltip="5×5 cells: about 3× less noise, half the resolution; auto: "
            "5×5 when the 3×3 strain std is above 0.3 % (dim images)",
        )
        self.count_atoms = CheckBox(label="Count atoms (HAADF)", value=True)
        self.magnification = FloatSlider(label="Arrow ×", value=10.0, min=1.0, max=50.0, step=1.0)
        self.set_value = SpinBox(label="Sublattice", value=0, min=0, max=9)
        self.set_button = PushButton(text="Set for selected points")
        self.set_button.tooltip = (
            "Give the selected points this sublattice; Run then uses your labels"
        )
        self.csv_path = FileEdit(label="CSV", mode=FileDialogMode.OPTIONAL_FILE, filter="*.csv")
        self.overwrite = CheckBox(label="Overwrite an existing file", value=False)
        self.export_button = PushButton(text="Export table (CSV)")
        self.summary = Label(label="Lattice", value="–")
        super().__init__(
            viewer,
            [
                self.image_layer,
                self.points_layer,
                self.shapes_layer,
                self.contrast,
                self.shells,
                self.count_atoms,
                self.magnification,
            ],
        )
        for w in (
            self.summary,
            self.set_value,
            self.set_button,
            self.csv_path,
            self.overwrite,
            self.export_button,
        ):
            self.append(w)
        self.summary.native.setWordWrap(True)
        self.summary.native.setMinimumWidth(220)  # wraps in the dock instead of widening it
        self.device_choice.visible = False  # no network here: everything runs on the CPU
        self.magnification.changed.connect(self._on_magnification)
        self.set_button.changed.connect(self._on_set_sublattice)
        self.export_button.changed.connect(self._on_export)
        self.image_layer.changed.connect(self._match_columns)
        self.pixel_size = add_pixel_size_row(self)
        follow_opened_images(self, self._ready_for, frames=False)  # it analyses one 2D image
        viewer.layers.events.inserted.connect(self._on_inserted)
        self.native.destroyed.connect(
            lambda *_: viewer.layers.events.inserted.disconnect(self._on_inserted)
        )
        self._match_columns()
        self.plot_dock: Any = None
        self.figure: Any = None
        self.run_result: LatticeRun | None = None  # the run on screen (its arrows follow Arrow ×)
        self._shown_name: str | None = None  # the layer name the shown run's layers start with

    # --- inputs -----------------------------------------------------------------------------
    def _own_columns(self, image):
        """The Atom finder's '<image> atoms' Points layer of ``image``, or None."""
        name = None if image is None else f"{image.name} atoms"
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, napari.layers.Points) else None

    def _match_columns(self, *_):
        """Columns follow the Image: its '<image> atoms' layer when it has one, else none (Run
        finds them) in place of another image's; a Points layer of the user's own is kept."""
        image = self.image_layer.value
        own = self._own_columns(image)
        current = self.points_layer.value
        if own is not None:
            if current is None or current.name != own.name:
                pick(self.points_layer, own)
        elif current is not None and image is not None and current.name.endswith(" atoms"):
            self.points_layer.value = None  # another image's columns would be read on this one

    def _on_inserted(self, event):
        layer = getattr(event, "value", None)
        image = self.image_layer.value
        if image is not None and getattr(layer, "name", None) == f"{image.name} atoms":
            self._match_columns()  # the Atom finder has just found this image's columns

    def _ready_for(self, layer) -> str:
        cols = self.points_layer.value
        how = (
            f"the columns in {cols.name!r}"
            if cols is not None
            else "the columns the Atom finder finds first"
        )
        return f"Ready: Run analyses the lattice of {layer.name!r} with {how}."

    def _inputs(self):
        image, points = self.image_layer.value, self.points_layer.value
        if points is None and self._own_columns(image) is not None:
            pick(self.points_layer, self._own_columns(image))  # not found again over edits
            points = self.points_layer.value
        if image is not None and (image.ndim != 2 or image.rgb):
            raise ValueError(
                f"Image {image.name!r} must be one 2D grey image for the lattice "
                "analysis (pick a single frame)."
            )
        if points is None:
            if image is None:
                raise ValueError(
                    "Pick the image, or the Points layer of its atom columns: with no Points "
                    "layer, Run finds the columns with the Atom finder first."
                )
            from napari_microml.runtime.units import too_coarse

            coarse = too_coarse(pixel_size_nm(image), f"the pixels of {image.name!r} are")
            if coarse:
                raise ValueError(
                    f"{coarse}. The lattice analysis needs an atomic-resolution image (or a "
                    "Points layer of the columns, picked under Columns)."
                )
            return image, None  # Run finds the columns first, as the Atom finder would
        if points.data.shape[1] != 2:
            raise ValueError(
                f"Points layer {points.name!r} has {points.data.shape[1]} dimensions; "
                "the lattice analysis takes the columns of one 2D image."
            )
        if len(points.data) < 6:
            raise ValueError(
                f"Points layer {points.name!r} holds {len(points.data)} points; a "
                "lattice needs at least 6."
            )
        return image, points

    @staticmethod
    def _to_pixels(layer, data, image):
        """``layer``'s data coordinates (…, 2) → the image's pixels (through world coordinates)."""
        world = np.asarray(data, float)[..., -2:] * np.asarray(
            layer.scale[-2:], float
        ) + np.asarray(layer.translate[-2:], float)
        if image is None:
            return world
        return (world - np.asarray(image.translate[-2:], float)) / np.asarray(
            image.scale[-2:], float
        )

    def _shapes(self, image):
        """Reference polygons and profile lines in image pixels, from the chosen Shapes layer."""
        shapes = self.shapes_layer.value
        regions, lines = [], []
        if shapes is None:
            return regions, lines
        for data, kind in zip(shapes.data, shapes.shape_type, strict=True):
            px = self._to_pixels(shapes, data, image)
            if kind in ("rectangle", "polygon", "ellipse"):
                regions.append(px)
            elif kind in ("line", "path"):
                lines.append(px)
        return regions, lines

    def _user_labels(self, points):
        meta = points.metadata.get(KEY, {}) if isinstance(points.metadata, dict) else {}
        if meta.get("lattice_user_sublattice") and "sublattice" in points.features:
            labels = points.features["sublattice"].to_numpy()
            if len(labels) == len(points.data) and np.all(labels >= 0):
                return labels.astype(int)
        return None

    def make_job(self) -> Job:
        from napari_microml.lattice import maps as lmaps
        from napari_microml.lattice.analyze import analyze_lattice_iter
        from napari_microml.lattice.counting import count_atoms_iter
        from napari_microml.runtime.workers import relabel

        image, points = self._inputs()
        regions, lines = self._shapes(image)
        pos, user, std = None, None, None  # the worker finds them when no Points layer is picked
        if points is not None:
            pos = self._to_pixels(points, points.data, image)
            user = self._user_labels(points)
            std = (
                points.features["position_std"].to_numpy(float)
                if "position_std" in points.features
                else None
            )
        contrast = self.contrast.value
        known = finder_contrast(points, image) if points is not None else None
        count = bool(self.count_atoms.value) and image is not None
        shells = {"auto": "auto", "5×5 cells": 2}.get(self.shells.value, 1)
        pixel_size = pixel_size_nm(image) if image is not None else None
        name = image.name if image is not None else points.name
        scan = scan_kind(image.metadata) if image is not None else "auto"

        def work(image=None):
            nonlocal pos, user, std, known
            found = None
            if points is None:
                found = yield from self._find_columns(image, contrast, pixel_size, name, scan)
                if isinstance(found, Refused):
                    return found
                pos, feats = found.positions, found.features
                std = feats["position_std"].to_numpy(float) if "position_std" in feats else None
            img, dark = None, False
            if image is not None:
                from napari_microml.lattice.analyze import columns_are_dark

                img = np.asarray(image, np.float64)
                if found is not None:
                    known = found.parameters.get("contrast")
                if contrast == "auto":  # the finder's decision, else read from the image
                    dark = known == "dark" if known else columns_are_dark(img, pos)
                else:
                    dark = contrast == "dark"
                if dark:
                    img = -img
            reference = lmaps.inside(pos, regions) if regions else None
            notes = []
            if reference is not None and reference.sum() < 6:
                notes.append(
                    f"the reference region holds {int(reference.sum())} columns; all are used"
                )
                reference = None
            try:
                lat = yield from relabel(
                    analyze_lattice_iter(
                        pos,
                        image=img,
                        reference=reference,
                        pixel_size=pixel_size,
                        position_std=std,
                        shells=shells,
                        sublattice=user,
                        input_name=name,
                    ),
                    "lattice: ",
                )
            except ValueError as err:
                if found is None:  # the user's points: the core's sentence names them
                    raise
                return Refused(  # the user picked no points: say whose they were
                    f"The Atom finder found {len(pos)} columns in {name!r}, but the lattice "
                    f"analysis cannot use them: {err} Is it an atomic-resolution image of a "
                    "crystal? Isolated atoms or particles have no lattice to analyse."
                )
            if img is not None:
                from napari_microml.atoms.widget import small_field

                small = small_field(img.shape, pos)
                if small:
                    notes.append(f"{small}: too few cells to trust; analyse a larger field of view")
            cnt = None
            if count and not dark:  # an ABF column's signal does not grow with its atoms
                # one mixture per sublattice: columns of different elements scatter differently
                groups = lat.sublattice if lat.n_sublattices > 1 else None
                try:
                    cnt = yield from relabel(
                        count_atoms_iter(img, pos, sublattice=groups, input_name=name),
                        "atom counting: ",
                    )
                except ValueError as err:  # e.g. too few columns: the lattice stands without
                    why = str(err).rstrip(".")
                    notes.append(f"no atom counting: {why[:1].lower()}{why[1:]}")
            elif count:
                notes.append("dark columns: no atom counting")
            yield Progress(4, 5, "maps")
            from napari_microml.lattice.sublattice import nn_distance

            step = max(1, int(round(nn_distance(pos) / 4)))
            shape = img.shape if img is not None else tuple(np.ceil(pos.max(0) + 1).astype(int))
            values = {
                "exx": lat.strain[:, 0],
                "eyy": lat.strain[:, 1],
                "exy": lat.strain[:, 2],
                "rotation": lat.rotation,
            }
            grids = lmaps.interpolated_maps(pos, values, shape, step)
            prof = None
            if lines:
                width = float(np.linalg.norm(lat.cell, axis=1).min())
                prof = tuple(
                    lmaps.profile(pos, lat.strain[:, k], lines[0], width) for k in range(3)
                )
            import matplotlib.backends.backend_qtagg  # noqa: F401 - imported here, not on the GUI thread
            import matplotlib.figure  # noqa: F401

            return LatticeRun(lat, cnt, grids, step, prof, notes, found=found)

        inputs = {"image": image} if image is not None else {}
        return Job(work, partial(self._show_run, image, points), inputs=inputs)

    @staticmethod
    def _find_columns(image, contrast: str, pixel_size: float | None, name: str, scan: str):
        """The Atom finder's default pass on ``image`` (its lattice model; in the worker), an
        SPM scan levelled as one (``scan``): its result, or :class:`Refused` when it finds too
        few columns for a lattice."""
        from napari_microml.atoms.choose import LATTICE_MODEL
        from napari_microml.atoms.finder import find_atoms_iter
        from napari_microml.atoms.widget import recommended_threshold
        from napari_microml.runtime.workers import relabel

        found = yield from relabel(
            find_atoms_iter(
                image,
                model=LATTICE_MODEL,
                threshold=recommended_threshold(LATTICE_MODEL),
                contrast=contrast,
                pixel_size=pixel_size,
                input_name=name,
                scan=scan,
            ),
            "no Points layer: finding the columns (Atom finder): ",
        )
        if len(found.positions) < 6:
            from napari_microml.atoms.widget import small_field

            small = small_field(np.shape(image), found.positions)
            why = (
                f"{small[0].upper()}{small[1:]}: analyse a larger field of view."
                if small
                else "Is it an atomic-resolution image?"
            )
            return Refused(
                f"The Atom finder found {len(found.positions)} atom columns in {name!r}; a "
                f"lattice needs at least 6. {why} Or add the columns as a Points layer and "
                "pick it under Columns."
            )
        return found

    # --- results ----------------------------------------------------------------------------
    def _show_run(self, image, points, run: LatticeRun) -> None:
        """Write the results one layer per event-loop turn (each new layer costs napari
        ~0.1–0.4 s to build; together they would freeze the window). With no Points layer
        picked, the Atom finder's columns come first, as the layer the Atom finder writes."""
        base = image.name if image is not None else points.name
        phys = physical_kwargs(image, 2) if image is not None else {}
        source = ""
        if run.found is not None:
            from napari_microml.atoms.widget import write_atoms_layer

            found = run.found
            source = (
                f" Columns: found by the Atom finder ({len(found.positions)} columns, model "
                f"{found.parameters.get('model', '?')}, threshold "
                f"{found.parameters.get('threshold', '?')}) as the layer "
                f"'{base} atoms'; edit them and Run again to re-analyse."
            )

        def write_columns():
            nonlocal points
            if run.found is not None:
                points = write_atoms_layer(self, image, run.found)
                self.points_layer.value = points
            self._write_points(points, run)

        def done():
            self.run_result, self._shown_name = run, base
            self.viewer.layers.selection.active = points
            self.progress.value = self.progress.max
            # the lattice itself in the status line: the summary row can sit below a squeezed dock
            self._say(f"Done: {self._summary(run)}.{source}")

        self.later(
            write_columns,
            *[lambda k=k: self._write_map(run, k, base, phys) for k in MAPS],
            lambda: self._write_vectors(run, base, phys),
            lambda: self._plot(run),
            done,
        )

    def _write_points(self, points, run):
        lat, cnt = run.lattice, run.counts
        table = lat.table()
        if len(points.features) == len(table):
            feats = points.features.reset_index(drop=True).copy()
        else:
            import pandas as pd

            feats = pd.DataFrame(index=range(len(table)))
        for col in FEATURES:
            if col == "count":
                feats[col] = cnt.counts if cnt is not None else np.full(len(table), -1)
            elif col == "cross_section":
                feats[col] = cnt.cross_section if cnt is not None else np.full(len(table), np.nan)
            else:
                feats[col] = table[col].to_numpy()
        points.features = feats
        points.border_color = np.array(SUBLATTICE_COLOURS)[lat.sublattice % len(SUBLATTICE_COLOURS)]
        meta = points.metadata.setdefault(KEY, {})
        meta["lattice_analysis"] = lat.provenance
        meta["lattice_user_sublattice"] = bool(lat.parameters.get("user_sublattice"))

    def _write_map(self, run, key, base, phys):
        if phys:
            grid_kwargs = {**phys, "scale": tuple(np.asarray(phys["scale"], float) * run.step)}
        else:
            grid_kwargs = {"scale": (run.step, run.step)}
        factor, unit = MAP_UNITS[key]
        grid = run.maps[key] * factor
        finite = np.abs(grid[np.isfinite(grid)])
        # ±the 98th percentile, so a few columns at a defect do not wash the map out
        lim = nice_limit(float(np.percentile(finite, 98)) if finite.size else 1.0)
        layer = self.upsert(
            f"{base} {key}",
            "image",
            np.nan_to_num(grid),
            colormap=diverging(),
            contrast_limits=(-lim, lim),
            opacity=0.6,
            blending="translucent",
            visible=(key == "exx"),
            interpolation2d="linear",
            metadata={**self.provenance_metadata(run.lattice.provenance), "unit": unit},
            **grid_kwargs,
        )
        colorbar = getattr(layer, "colorbar", None)  # napari without layer colour bars: none
        if colorbar is not None:
            colorbar.visible = key == "exx"
            colorbar.size = (25, 220)  # room for the ticks between the ends
        if key == "exx":
            for other in self.viewer.layers:  # one bar, the one the title names
                bar = getattr(other, "colorbar", None)
                if other.name != layer.name and bar is not None and bar.visible:
                    bar.visible = False
                # another image's maps have their own limits: beside this bar they misread
                record = other.metadata.get(KEY) if isinstance(other.metadata, dict) else None
                if (
                    isinstance(other, napari.layers.Image)
                    and isinstance(record, dict)
                    and record.get("tool") == "lattice_analysis"
                    and not other.name.startswith(f"{base} ")
                ):
                    other.visible = False
            name_colour_bar(self.viewer, f"{key} ({unit}), ±{lim:g} {unit}")

    def _write_vectors(self, run, base, phys):
        """Displacement arrows in the image's pixels, drawn × the magnification."""
        lat = run.lattice
        ok = np.isfinite(lat.displacement).all(axis=1)
        vec = np.stack([lat.positions[ok], lat.displacement[ok]], axis=1)
        self.upsert(
            f"{base} displacement",
            "vectors",
            vec,
            length=float(self.magnification.value),
            edge_width=1.5,
            edge_color="#ffd60a",
            metadata=self.provenance_metadata(lat.provenance),
            **phys,
        )

    def _summary(self, run) -> str:
        lat, cnt = run.lattice, run.counts
        L = lat.lattice
        unit, f = ("pm", 1.0) if "a_pm" in L else ("px", 1.0)
        a = L.get(f"a_{unit}", L["a_px"]) * f
        b = L.get(f"b_{unit}", L["b_px"]) * f
        text = (
            f"{len(lat.positions)} columns, {lat.n_sublattices} sublattice(s); "
            f"a = {a:.1f} ± {L.get(f'a_{unit}_std', np.nan):.1f} {unit}, "
            f"b = {b:.1f} ± {L.get(f'b_{unit}_std', np.nan):.1f} {unit}, "
            f"γ = {L['gamma_deg']:.1f} ± {L['gamma_deg_std']:.1f}°; strain fit over "
            f"{'5×5' if lat.parameters.get('shells') == 2 else '3×3'} cells"
        )
        if lat.parameters.get("shells_requested") == "auto":
            text += f", auto ({lat.parameters['shells_reason']})"
        if cnt is not None:
            if cnt.groups:  # "1/1 levels" read as a fraction: name each sublattice
                levels = ", ".join(
                    f"{len(m.means)} in sublattice {k}" for k, m in cnt.groups.items()
                )
                text += f"; atom-count levels (column thicknesses): {levels}"
            else:
                text += f"; atom-count levels (column thicknesses): {cnt.n_components}"
            if cnt.edge is not None and cnt.edge.any():
                text += f", {int(cnt.edge.sum())} edge columns not counted (count 0)"
        if run.notes:
            text += " (" + "; ".join(run.notes) + ")"
        self.summary.value = text
        return text

    def _plot(self, run) -> None:
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            return
        if self.figure is None or self.plot_dock is None:
            self.figure = Figure(figsize=(4, 3.6))
            self.canvas = FigureCanvasQTAgg(self.figure)
            self.canvas.setMinimumHeight(300)  # two plots with their titles and axis labels
            self.plot_dock = self.viewer.window.add_dock_widget(
                self.canvas, name="Lattice plots", area="right"
            )
        fig = self.figure
        fig.clear()
        cnt = run.counts
        # no empty axes when atoms were not counted (dark columns, or switched off)
        ax1, ax2 = fig.subplots(2, 1) if cnt is not None else (None, fig.subplots(1, 1))
        # fixed margins (tight_layout costs a redraw), wide enough for the titles and labels
        fig.subplots_adjust(left=0.14, right=0.97, top=0.92, bottom=0.12, hspace=0.75)
        if ax1 is not None and cnt is not None:
            x = cnt.cross_section
            grid = np.linspace(x.min(), x.max(), 400)
            bins = np.linspace(x.min(), x.max(), min(80, max(10, len(x) // 10)) + 1)
            groups = cnt.groups or {None: cnt.mixture}
            title = []
            for lab, mixture in groups.items():
                sel = np.ones(len(x), bool) if lab is None else run.lattice.sublattice == lab
                colour = (
                    "#888888" if lab is None else SUBLATTICE_COLOURS[lab % len(SUBLATTICE_COLOURS)]
                )
                weight = sel.mean()  # each group's share of one density, as its mixture's curves
                ax1.hist(
                    x[sel],
                    bins=bins,
                    color=colour,
                    alpha=0.35,
                    histtype="stepfilled",
                    weights=np.full(sel.sum(), 1.0 / (len(x) * (bins[1] - bins[0]))),
                )
                comp = mixture.pdf(grid) * weight
                ax1.plot(grid, comp, lw=0.6, color=colour)
                ax1.plot(grid, comp.sum(1), lw=1.2, color="k" if lab is None else colour)
                title.append(
                    f"{len(mixture.means)}"
                    if lab is None
                    else f"{len(mixture.means)} in sublattice {lab}"
                )
            ax1.set_title("atom-count levels: " + ", ".join(title), fontsize=8)
            ax1.set_xlabel("column cross-section (image intensity × px²)", fontsize=7)
            ax1.set_yticks([])  # a density: its scale says nothing to the user
            ax1.tick_params(labelsize=7)
            ax1.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        if run.profile is not None:
            nm = getattr(run.lattice, "pixel_size", None)  # calibrated: in the scale bar's unit
            for (s, v), label in zip(run.profile, ("exx", "eyy", "exy"), strict=True):
                ax2.plot(s * (nm or 1.0), 100 * v, ".-", ms=3, lw=0.8, label=label)
            ax2.set_xlabel(f"distance along the line ({'nm' if nm else 'px'})", fontsize=7)
            ax2.set_ylabel("strain (%)", fontsize=7)
            ax2.legend(fontsize=7)
        else:
            lat = run.lattice
            for sub in range(lat.n_sublattices):
                v = lat.strain[lat.sublattice == sub, 0]
                ax2.hist(
                    100 * v[np.isfinite(v)], bins=40, histtype="step", label=f"sublattice {sub}"
                )
            ax2.set_title("exx per column (draw a line in Shapes for a profile)", fontsize=8)
            ax2.set_xlabel("exx (%)", fontsize=7)
            ax2.set_ylabel("columns", fontsize=7)
            ax2.legend(fontsize=7)
        ax2.tick_params(labelsize=7)
        self.canvas.draw_idle()

    # --- interactions -----------------------------------------------------------------------
    def _on_magnification(self, *_):
        if self._shown_name is None:
            return
        name = f"{self._shown_name} displacement"
        if name in self.viewer.layers:
            self.viewer.layers[name].length = float(self.magnification.value)

    def _on_set_sublattice(self, *_):
        points = self.points_layer.value
        if points is None:
            self._say("Pick the Points layer first.")
            return
        selected = sorted(points.selected_data)
        if not selected:
            self._say(
                "Select points first (the Points layer's select tool), then set their sublattice."
            )
            return
        feats = points.features.reset_index(drop=True).copy()
        if "sublattice" not in feats or len(feats) != len(points.data):
            self._say("Run the analysis once before reassigning sublattices.")
            return
        labels = feats["sublattice"].to_numpy().astype(int)
        labels[selected] = int(self.set_value.value)
        feats["sublattice"] = labels
        points.features = feats
        points.border_color = np.array(SUBLATTICE_COLOURS)[labels % len(SUBLATTICE_COLOURS)]
        points.metadata.setdefault(KEY, {})["lattice_user_sublattice"] = True
        self._say(
            f"{len(selected)} point(s) set to sublattice {int(self.set_value.value)}; "
            "press Run to analyse with your labels."
        )

    def _on_export(self, *_):
        from napari_microml.io.writer import write_points_csv

        points = self.points_layer.value
        if points is None or "exx" not in points.features:
            self._say("Run the analysis first: there is no per-column table to export.")
            return
        path = Path(str(self.csv_path.value))
        if not str(self.csv_path.value) or path.is_dir():
            self._say("Choose a CSV file name first.")
            return
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        if path.exists() and not self.overwrite.value:
            self._say(
                f"{path.name} exists; tick 'Overwrite an existing file' or choose another name."
            )
            return
        attrs = {
            "name": points.name,
            "scale": points.scale,
            "translate": points.translate,
            "units": getattr(points, "units", None),
            "features": points.features,
            "metadata": {KEY: points.metadata.get(KEY, {}).get("lattice_analysis", {})},
            "column_units": column_units(points.features.columns),
        }
        written = write_points_csv(str(path), np.asarray(points.data), attrs)
        self._say(f"Wrote {len(points.data)} columns to {written[0]}.")
