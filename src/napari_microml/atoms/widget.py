"""Atom finder dock widget: image → Points layer of refined columns (+ probability map)."""

from __future__ import annotations

import weakref
from functools import partial
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSlider, PushButton

from napari_microml.atoms.choose import LATTICE_MODEL, SINGLE_ATOMS_MODEL
from napari_microml.atoms.finder import AUTO, NOISY_PERIOD, find_atoms_iter, refine_points_iter
from napari_microml.atoms.finetune import unsure_note
from napari_microml.atoms.refine import METHODS
from napari_microml.runtime.contrast import CONTRASTS, ContrastChoice
from napari_microml.runtime.level import scan_kind
from napari_microml.runtime.provenance import KEY
from napari_microml.runtime.units import too_coarse
from napari_microml.runtime.validate import check_image_layer
from napari_microml.runtime.widget import (
    Job,
    ToolWidget,
    add_pixel_size_row,
    as_points,
    follow_opened_images,
    layer_picker,
    levelling_note,
    physical_kwargs,
    pixel_size_nm,
    preload,
    resample_note,
    rescale_combo,
    viewer_camera,
)

FIT_OK_COLOR, FIT_FAILED_COLOR, MANUAL_COLOR = "#ff3b30", "#ffd60a", "#34c7ff"
"""Point colours: a column whose Gaussian fit converged, one whose fit failed (its position is
the centre of mass; drawn as a square), and a point the user added (no network score)."""
CONTRAST_TIP = (
    "auto: decided from the image (the sign of its band-passed skew) and named in the "
    "status line; bright: HAADF/ADF/STM (bright columns); dark: ABF/BF (dark columns, "
    "inverted for the network)"
)


def manual_defaults(columns) -> dict:
    """Feature values a point added by hand gets: no network score, no fit yet, manual=True
    (napari would otherwise copy the last found column's values)."""
    out = {c: np.nan for c in columns}
    out.update({"fit_ok": False, "manual": True})
    return out


_WATCHED: weakref.WeakSet = weakref.WeakSet()
# points layer's unique id → (its run's provenance 'created', the points the finder wrote): Teach
# opened after the user's edits still counts them against the finder's points
FOUND_POINTS: dict = {}


def watch_added(layer) -> None:
    """Give every point the user adds (a click in add mode) the manual feature values: napari
    fills a new point's features from the selected or last point, i.e. a copied network score."""
    if layer in _WATCHED:
        return
    _WATCHED.add(layer)

    def on_data(event):
        idx = np.asarray(getattr(event, "data_indices", ()), int)
        if str(getattr(event, "action", "")) != "added" or not len(idx) or (idx >= 0).any():
            return  # only Points.add (negative indices), not a whole new data array
        feats = layer.features
        rows = feats.index[idx + len(feats)]
        for col, value in manual_defaults(feats.columns).items():
            feats.loc[rows, col] = value
        style_points(layer)

    layer.events.data.connect(on_data)


def points_to_pixels(points, image_layer) -> np.ndarray:
    """Points-layer data → (row, col) or (frame, row, col) pixels of ``image_layer`` (through
    both layers' scale and translate, so a Points layer drawn in nm lands on the right pixels)."""
    data = np.asarray(points.data, float)
    if len(data) == 0:
        raise ValueError(f"The points layer {points.name!r} has no points.")
    n = min(data.shape[1], image_layer.ndim)
    world = data[:, -n:] * np.asarray(points.scale[-n:]) + np.asarray(points.translate[-n:])
    px = (world - np.asarray(image_layer.translate[-n:])) / np.asarray(image_layer.scale[-n:])
    if image_layer.ndim == 2:
        return px[:, -2:]
    if px.shape[1] == 2:
        raise ValueError(
            f"The image is a stack but the points layer {points.name!r} has no frame "
            "axis; add the points in the stack's frames."
        )
    px[:, 0] = np.rint(px[:, 0])
    return px


def style_points(layer) -> None:
    """Colour every point by where it came from and its fit: found and fitted (red ring), found
    but the Gaussian fit failed (yellow square), added by hand (blue; a square once a Refine
    fit failed); points the user adds next are drawn as added by hand."""
    feats = layer.features
    n = len(layer.data)
    ok = feats["fit_ok"].to_numpy(bool) if "fit_ok" in feats else np.ones(n, bool)
    manual = feats["manual"].to_numpy(bool) if "manual" in feats else np.zeros(n, bool)
    tried = ~manual | (
        np.isfinite(feats["position_std"].to_numpy(float)) if "position_std" in feats else False
    )
    if n:
        layer.border_color = list(
            np.where(manual, MANUAL_COLOR, np.where(ok, FIT_OK_COLOR, FIT_FAILED_COLOR))
        )
        layer.symbol = list(np.where(tried & ~ok, "square", "ring"))
    layer.current_border_color = MANUAL_COLOR
    layer.current_symbol = "ring"
    layer.feature_defaults = manual_defaults(feats.columns)


BORDER_SLACK_PX = 2.0  # points this close outside the image are skipped by Refine, not refused


def just_outside(positions: np.ndarray, shape) -> np.ndarray:
    """Which (row, col) pixel ``positions`` lie outside an image of ``shape`` (H, W) by at most
    BORDER_SLACK_PX: a column at the edge nudged out, not a unit mix-up (farther points are
    left to the refiner, which refuses them with its explanation)."""
    pos = np.asarray(positions, float).reshape(-1, 2)
    high = np.asarray(shape[-2:], float) - 0.5
    below, above = -0.5 - pos, pos - high
    beyond = np.maximum(below, above).max(axis=1)  # > 0: outside, by this many px
    return (beyond > 0) & (beyond <= BORDER_SLACK_PX)


def fit_note(features, refined: bool = False) -> str:
    """'; the Gaussian fit failed for k (squares: centre of mass used)' or ''; points
    added by hand count only once ``refined`` (before that they have had no fit)."""
    if "fit_ok" not in features or not len(features):
        return ""
    manual = (
        features["manual"].to_numpy(bool)
        if "manual" in features and not refined
        else np.zeros(len(features), bool)
    )
    failed = int((~features["fit_ok"].to_numpy(bool) & ~manual).sum())
    if not failed:
        return "; every Gaussian fit converged"
    return f"; the Gaussian fit failed for {failed} (squares: centre of mass used)"


def _model_choices() -> list[str]:
    """'auto' (when there is something to choose between), then every atoms model by name."""
    from napari_microml.atoms.choose import LATTICE_MODEL, SINGLE_ATOMS_MODEL
    from napari_microml.nets.registry import list_models

    names = [n.removeprefix("atoms-") for n in list_models("atoms")]
    can_choose = {LATTICE_MODEL, SINGLE_ATOMS_MODEL} <= set(names)
    return [AUTO, *names] if can_choose else names or [LATTICE_MODEL]


def model_note(parameters: dict) -> str:
    """A sentence for the status line when ``model='auto'`` chose the model, else ''."""
    choice = parameters.get("model_choice")
    return f" Model auto → {choice['chosen']}: {choice['reason']}." if choice else ""


def found_what(parameters: dict, n: int = 2) -> str:
    """'atoms' when Model auto read the field as isolated atoms, else 'columns' (singular for
    ``n`` = 1)."""
    from napari_microml.atoms.choose import SINGLE_ATOMS_MODEL

    choice = parameters.get("model_choice") or {}
    word = "atom" if choice.get("chosen") == SINGLE_ATOMS_MODEL else "column"
    return word if n == 1 else word + "s"


def recommended_threshold(model: str) -> float:
    """The detection threshold recorded for atoms model ``model`` (0.5 when it has none)."""
    from napari_microml.nets.registry import list_models

    meta = list_models("atoms").get(f"atoms-{model}", {}).get("meta", {})
    return float(meta.get("recommended_threshold", 0.5))


def write_atoms_layer(tool: ToolWidget, layer, result):
    """Add or update the '<image> atoms' Points layer of ``result`` (an atom-finder result on
    image ``layer``) in ``tool``'s viewer, with its features and provenance; the layer."""
    data = as_points(result.positions, result.frames)
    sigma = np.nanmedian(result.features["sigma"]) if len(result.features) else np.nan
    size = float(np.clip(2.5 * sigma, 3, 30)) if np.isfinite(sigma) else 5.0
    features = result.features.reset_index(drop=True)
    features["manual"] = False
    points = tool.upsert(
        AtomFinderWidget.points_name(layer),
        "points",
        data,
        features=features,
        size=size,
        face_color="transparent",
        border_color=FIT_OK_COLOR,
        border_width=0.15,
        metadata=tool.provenance_metadata(result.provenance),
        **physical_kwargs(layer, data.shape[1]),
    )
    style_points(points)
    watch_added(points)
    fade_when_crowded(tool.viewer, points)
    record = points.metadata.get(KEY) or {}
    found = np.asarray(points.data, float)[:, -2:].copy()
    FOUND_POINTS[getattr(points, "unique_id", points.name)] = (record.get("created"), found)
    return points


CROWDED_RING_PX = 4.0  # a ring drawn smaller is a blob: 30k of them hid a 4096² frame at full view
CROWDED_OPACITY = 0.15  # the image reads through; 0.3 still tinted a 4096² frame red
_FADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # points layer → fade state


def ring_screen_px(viewer, points) -> float:
    """The median ring's diameter on screen (canvas px) at the viewer's current zoom."""
    sizes = np.asarray(points.size, float).ravel()
    if not sizes.size:
        return np.inf
    scale = float(np.mean(np.abs(np.asarray(points.scale, float)[-2:])))
    return float(np.median(sizes)) * scale * float(viewer_camera(viewer).zoom)


def fade_when_crowded(viewer, points) -> None:
    """Draw ``points`` faint (opacity CROWDED_OPACITY) while their rings are under
    CROWDED_RING_PX on screen, at their own opacity once zoomed in: the positions never change.
    An opacity the user set while faded is kept."""
    points = getattr(points, "__wrapped__", points)  # napari's plugin proxy: a new one per access
    if points in _FADE:
        _update_fade(viewer, points)
        return
    _FADE[points] = {"faded": False, "opacity": float(points.opacity)}
    ref = weakref.ref(points)

    def on_zoom(*_):
        layer = ref()
        if layer is None or layer not in viewer.layers:
            viewer_camera(viewer).events.zoom.disconnect(on_zoom)
            return
        _update_fade(viewer, layer)

    viewer_camera(viewer).events.zoom.connect(on_zoom)
    _update_fade(viewer, points)


def _update_fade(viewer, points) -> None:
    state = _FADE.get(getattr(points, "__wrapped__", points))
    if state is None:
        return
    crowded = ring_screen_px(viewer, points) < CROWDED_RING_PX
    if crowded and not state["faded"]:
        state["opacity"], state["faded"] = float(points.opacity), True
        points.opacity = min(state["opacity"], CROWDED_OPACITY)
    elif not crowded and state["faded"]:
        state["faded"] = False
        if abs(float(points.opacity) - min(state["opacity"], CROWDED_OPACITY)) < 1e-6:
            points.opacity = state["opacity"]  # not changed by the user meanwhile


def crowded_note(viewer, points) -> str:
    """' At this zoom the N rings are drawn faint …' while ``points`` are faded, else ''."""
    state = _FADE.get(getattr(points, "__wrapped__", points)) or {}
    if not state.get("faded"):
        return ""
    return (
        f" At this zoom each of the {len(points.data)} rings would be under "
        f"{CROWDED_RING_PX:.0f} screen pixels and hide the image, so they are drawn faint; "
        "zoom in to see them in full."
    )


SMALL_FIELD_SPACINGS = 4  # fewer column spacings than this across an image: no lattice to see


def small_field(shape, positions) -> str:
    """'the image is 64 × 64 px, about 3 column spacings across' when the columns at
    ``positions`` are packed like a lattice's (not isolated atoms far apart) but the image's
    short side holds fewer than SMALL_FIELD_SPACINGS of their spacings, else ''."""
    from napari_microml.lattice.sublattice import nn_distance

    pos = np.asarray(positions, float).reshape(-1, 2)
    h, w = (int(n) for n in tuple(shape)[-2:])
    if len(pos) < 2:
        return ""
    spacing = nn_distance(pos)
    across = min(h, w) / spacing if spacing > 0 else np.inf
    # a lattice puts one column per spacing²; scattered atoms leave most of the field empty
    packed = len(pos) * spacing**2 > 0.5 * h * w
    if across >= SMALL_FIELD_SPACINGS or not packed:
        return ""
    return (
        f"the image is {w} × {h} px, about {across:.0f} column spacings ({spacing:.0f} px) across"
    )


def found_sentence(result) -> str:
    """The status sentence for an atom-finder result: how many, the contrast, fits, model."""
    why = too_coarse(result.pixel_size)
    coarse = bool(why)
    if coarse:
        why += ". The Atom finder needs an atomic-resolution image"
    if coarse and not len(result.positions):
        return f"Found no atom columns: {why}."
    choice = result.parameters.get("contrast_choice") or {}
    contrast = ContrastChoice(
        result.parameters.get("contrast", "bright"),
        choice.get("requested", "bright"),
        choice.get("skew"),
    )
    n = len(result.positions)
    small = ""
    if (result.parameters.get("model_choice") or {}).get("chosen") == SINGLE_ATOMS_MODEL:
        small = small_field(result.probability.shape, result.positions)
    return (
        f"Found {n} {found_what(result.parameters, n)}, "
        f"{contrast.note()}{fit_note(result.features)}."
        + model_note(result.parameters)
        + (
            f" But {small}: too few to recognise a lattice; if it shows a crystal, choose "
            f"Model '{LATTICE_MODEL}'."
            if small
            else ""
        )
        + resample_note(result.parameters)
        + levelling_note(result.parameters)
        + unsure_note(result)
        + (f" These are not atom columns: {why}." if coarse else "")
    )


class AtomFinderWidget(ToolWidget):
    tool_name = "atom_finder"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.image_layer = layer_picker(napari.layers.Image, label="Image")
        self.image_layer.tooltip = (
            "The grey image (2D or a stack of frames); its pixel size in nm "
            "comes from the layer's scale and units"
        )
        self.model = ComboBox(
            label="Model",
            choices=lambda _w: _model_choices(),
            tooltip="The atom-finder network. auto: the lattice model ('default'), re-run with "
            "'pt-single-atoms' only when neither the columns it finds nor the image show a "
            "lattice (isolated atoms on an amorphous support); the status line says which ran "
            "and why. Or a shipped model or one you fine-tuned (they appear here by name)",
        )
        self.threshold = FloatSlider(
            label="Threshold",
            value=0.5,
            min=0.05,
            max=0.95,
            step=0.05,
            tooltip="Minimum network probability (0–1, no unit) of a column "
            "peak; lower finds fainter columns and more false ones",
        )
        self.refine = ComboBox(
            label="Refinement",
            choices=list(METHODS),
            value="gaussian",
            tooltip="Sub-pixel positions (px): gaussian = a 2D Gaussian fit per "
            "column (failed fits fall back to the centre of mass and are "
            "shown as yellow squares); com = intensity centre of mass; "
            "none = the network's peak",
        )
        self.contrast = ComboBox(
            label="Columns are",
            choices=list(CONTRASTS),
            value="auto",
            tooltip=CONTRAST_TIP,
        )
        self.rescale = rescale_combo(f"5–{NOISY_PERIOD:g} px")
        self.show_probability = CheckBox(
            label="Add probability map",
            value=False,
            tooltip="Also add the network's column probability (0–1) as an image layer",
        )
        self.refine_button = PushButton(text="Refine points")
        self.refine_button.tooltip = (
            "Re-fit exactly the points now in the '<image> atoms' layer "
            "after you add, move or delete points; points you add have no "
            "network score (score NaN, manual True)"
        )
        self.save_button = PushButton(text="Save points…")
        self.save_button.tooltip = (
            "Save the '<image> atoms' layer as CSV: row/col in px and in the image's unit (nm), "
            "the features, and a .csv.json beside it with the scale, units and provenance; "
            "File → Open reads it back in place (napari's own CSV type keeps pixels only)"
        )
        super().__init__(
            viewer,
            [
                self.image_layer,
                self.model,
                self.threshold,
                self.refine,
                self.contrast,
                self.rescale,
                self.show_probability,
            ],
        )
        self.append(self.refine_button)
        self.append(self.save_button)
        self.refine_button.changed.connect(self._on_refine_clicked)
        self.save_button.changed.connect(self._on_save_clicked)
        self._found: dict[str, str] = {}  # points layer → its run's sentence (said again)
        self.pixel_size = add_pixel_size_row(self)
        follow_opened_images(self, lambda layer: f"Ready: Run finds the atoms in {layer.name!r}.")
        self.model.changed.connect(self._on_model_changed)
        self._on_model_changed()
        preload("torch")  # imported in the worker it held the GIL and Cancel for seconds

    def _on_model_changed(self, *_):
        """Use the detection threshold recorded for the chosen model, when it has one, and say
        when the points shown came from another model."""
        self.threshold.value = recommended_threshold(self.model.value)
        self._say_model_of_result()

    def _say_model_of_result(self) -> None:
        """Status: the shown points were found with another model than the one now chosen (Teach
        selects its new model here), or the points' own sentence once that model is back."""
        from napari_microml.atoms.choose import LATTICE_MODEL, SINGLE_ATOMS_MODEL
        from napari_microml.atoms.teach_widget import finder_model

        layer = self.image_layer.value
        name = None if layer is None else self.points_name(layer)
        if self.busy or name is None or name not in self.viewer.layers:
            return
        used = finder_model(self.viewer.layers[name])
        if used is None:
            return
        chosen = self.model.value
        if chosen == used or (chosen == AUTO and used in (LATTICE_MODEL, SINGLE_ATOMS_MODEL)):
            if name in self._found and self.status.value.startswith("Model is now"):
                self._say(self._found[name])
            return
        self._say(
            f"Model is now {chosen!r}; the points on {layer.name!r} were found with {used!r}. "
            f"Press Run to find them with {chosen!r}."
        )

    # -- run ---------------------------------------------------------------------------------
    def _selected_image(self):
        layer = self.image_layer.value
        check_image_layer(layer, tool="atom finder")
        return layer

    def make_job(self) -> Job:
        layer = self._selected_image()
        kwargs = dict(
            model=self.model.value,
            threshold=float(self.threshold.value),
            refine=self.refine.value,
            contrast=self.contrast.value,
            rescale=self.rescale.value,
            device=self.device_choice.value,
            pixel_size=pixel_size_nm(layer),
            input_name=layer.name,
            scan=scan_kind(layer.metadata),  # read from an STM/AFM file: levelled as one
        )

        def work(image):
            return (yield from find_atoms_iter(image, **kwargs))

        show = partial(self._show_found, layer, bool(self.show_probability.value))
        return Job(work, show, inputs={"image": layer})

    @staticmethod
    def points_name(layer) -> str:
        """The name of the Points layer the finder writes for image ``layer``."""
        return f"{layer.name} atoms"

    def _show_found(self, layer, with_probability: bool, result) -> None:
        points = write_atoms_layer(self, layer, result)
        if with_probability:
            self.upsert(
                f"{layer.name} atom probability",
                "image",
                result.probability,
                colormap="magma",
                opacity=0.5,
                blending="additive",
                contrast_limits=(0, 1),
                metadata=self.provenance_metadata(result.provenance),
                **physical_kwargs(layer, result.probability.ndim),
            )
        self._found[self.points_name(layer)] = found_sentence(result)
        self._say(self._found[self.points_name(layer)] + crowded_note(self.viewer, points))

    # -- save ----------------------------------------------------------------------------------
    def _on_save_clicked(self, *_):
        from qtpy.QtWidgets import QFileDialog

        from napari_microml.io.writer import write_points_csv

        layer = self.image_layer.value
        name = None if layer is None else self.points_name(layer)
        if name is None or name not in self.viewer.layers:
            self._say("No atoms to save: run the finder on the image first.")
            return
        points = self.viewer.layers[name]
        path, _ = QFileDialog.getSaveFileName(  # Qt's dialog asks before replacing a file
            self.native, "Save atoms", f"{name}.csv", "microml points CSV (*.csv)"
        )
        if not path:
            return
        if not path.lower().endswith(".csv"):
            path += ".csv"
        data, attributes, _ = points.as_layer_data_tuple()
        csv, side = write_points_csv(path, data, attributes)
        unit = str(points.units[-1]) if len(points.units) else "pixel"
        self._say(
            f"Saved {len(data)} points to {csv} (px and {unit}; scale, units and provenance "
            f"in {Path(side).name})."
        )

    # -- refine the user's edited points ------------------------------------------------------
    def _on_refine_clicked(self, *_):
        if self.busy:
            return
        try:
            layer = self._selected_image()
        except ValueError as err:
            self._say(str(err))
            return
        name = self.points_name(layer)
        if name not in self.viewer.layers:
            self._say(
                f"No layer {name!r} to refine: run the finder or add a Points layer with that name."
            )
            return
        points = self.viewer.layers[name]
        try:
            pts = points_to_pixels(points, layer)
        except ValueError as err:
            self._say(str(err))
            return
        frames = pts[:, 0].round().astype(int) if pts.shape[1] == 3 else None
        method = self.refine.value
        # the contrast the finder used for this layer, unless the user has set one
        used = points.metadata.get("napari_microml", {}).get("parameters", {}).get("contrast")
        contrast = self.contrast.value if self.contrast.value != "auto" else used or "auto"
        skip = just_outside(pts[:, -2:], layer.data.shape[-2:])
        fit = ~skip
        n_skip = int(skip.sum())
        if n_skip and n_skip == len(pts):
            self._say(
                f"All {len(pts)} points lie just outside the image: nothing to refine. "
                "Move them onto the image first."
            )
            return

        def work(image):
            return (
                yield from refine_points_iter(
                    image,
                    pts[fit, -2:],
                    frames=None if frames is None else frames[fit],
                    refine=method,
                    contrast=contrast,
                    scan=scan_kind(layer.metadata),
                )
            )

        def apply(result):
            fitted, feats = result
            pos = pts[:, -2:].copy()
            pos[fit] = fitted
            old = points.features.reset_index(drop=True)
            for col in feats.columns:  # the skipped points keep what they had
                if col not in old:
                    old[col] = np.nan if feats[col].dtype.kind == "f" else True
                old.loc[fit, col] = feats[col].to_numpy()
            if "manual" not in old:
                old["manual"] = False
            old["manual"] = old["manual"].fillna(True).astype(bool)
            world = as_points(pos, frames)
            n = min(world.shape[1], layer.ndim)  # back to the points layer's own coordinates
            world[:, -n:] = (
                world[:, -n:] * np.asarray(layer.scale[-n:])
                + np.asarray(layer.translate[-n:])
                - np.asarray(points.translate[-n:])
            ) / np.asarray(points.scale[-n:])
            points.data = world
            points.features = old
            style_points(points)
            watch_added(points)
            points.metadata.setdefault("napari_microml", {})["refined_points"] = {
                "refine": method,
                "contrast": contrast,
                "n_points": int(fit.sum()),
                "n_manual": int(old["manual"].sum()),
                "n_skipped_outside": n_skip,
            }
            left = (
                f" Skipped {n_skip} point{'s' if n_skip > 1 else ''} just outside the image "
                "(left where placed)."
                if n_skip
                else ""
            )
            self._say(
                f"Refined {int(fit.sum())} points ({int(old['manual'].sum())} added by hand)"
                f"{fit_note(old[fit], refined=True)}.{left}"
            )

        self.start(Job(work, apply, inputs={"image": layer}))
