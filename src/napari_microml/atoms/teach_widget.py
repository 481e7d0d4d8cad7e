"""The "Teach the atom finder" dock widget: fine-tune on the user's corrected Points layers.

Pairs of an Image layer and the Points layer the user corrected (found by the Atom finder's
"<image> atoms" naming, or added by hand) → Fine-tune / Stop with a live loss and held-out F1
plot → the new model is selected in the Atom finder. A review list walks the least certain
detections first and counts the points added, removed and moved per image.
"""

from __future__ import annotations

from contextlib import contextmanager

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    Label,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
    create_widget,
)

from napari_microml.atoms.finetune import (
    DEFAULT_STEPS,
    count_edits,
    finetune_atoms_iter,
    review_order,
)
from napari_microml.atoms.widget import FOUND_POINTS
from napari_microml.runtime.level import scan_kind
from napari_microml.runtime.widget import Job, ToolWidget, viewer_camera
from napari_microml.runtime.workers import Loss

ARROW = " ← "
FROM_FINDER = "what the Atom finder used on these images"
EDITS_TIP = "Points added, removed and moved since this panel first saw each layer"


def short(name: str, limit: int = 26) -> str:
    """``name`` cut in the middle to at most ``limit`` characters, so long file names fit the
    dock's column (their two ends tell images apart: number and suffix)."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return f"{name[:head]}…{name[len(name) - (limit - 1 - head) :]}"


def _atom_models() -> list[str]:
    from napari_microml.nets.registry import list_models

    return [n.removeprefix("atoms-") for n in list_models("atoms")] or ["default"]


def _user_models() -> list[str]:
    from napari_microml.nets.user_models import list_user_models

    return [n.removeprefix("atoms-") for n in list_user_models("atoms")]


def finder_model(points) -> str | None:
    """The model the Atom finder ran to produce ``points`` (short name), or None when the
    layer is not an Atom finder result (points added by hand, or from a file)."""
    record = points.metadata.get("napari_microml") or {}
    if record.get("tool") != "atom_finder":
        return None
    parameters = record.get("parameters") or {}
    # the loaded model's name is what ran; parameters say 'auto' when the finder chose it
    name = (record.get("model") or {}).get("name") or (
        (parameters.get("model_choice") or {}).get("chosen") or parameters.get("model")
    )
    return str(name).removeprefix("atoms-") if name else None


def start_model(pairs: list[tuple], available: list[str]) -> tuple[str, str]:
    """The model to fine-tune from for these (image, points) layer pairs, and why.

    The model the Atom finder used on all of them, so the new model is judged against what the
    user had; the lattice model when the pairs disagree, are not finder results, or that model
    is gone.
    """
    from napari_microml.atoms.choose import LATTICE_MODEL

    used = {points.name: finder_model(points) for _, points in pairs}
    models = set(used.values())
    if not used:
        return LATTICE_MODEL, "the lattice model"
    if None in models:
        hand = [repr(short(n)) for n, m in used.items() if m is None]
        return LATTICE_MODEL, (
            f"the lattice model: {', '.join(hand)} did not come from the Atom finder"
        )
    if len(models) > 1:
        each = "; ".join(f"{m} on {short(n)!r}" for n, m in used.items())
        return LATTICE_MODEL, f"the lattice model: the Atom finder used {each}"
    (model,) = models
    if model not in available:
        return LATTICE_MODEL, (
            f"the lattice model: {model!r}, which the Atom finder used, is not installed"
        )
    return str(model), FROM_FINDER


def _fit_column(widget) -> None:
    """Let a list or drop-down with long layer names narrow to the dock's column: names are
    cut in the middle ("021_HAADF…21Oct20 atoms") instead of widening the dock sideways."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QComboBox

    if isinstance(widget, QComboBox):
        widget.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        widget.setMinimumContentsLength(12)
    else:
        widget.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        widget.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        widget.setMinimumWidth(120)


def _in_image_pixels(points, image) -> np.ndarray:
    """(N, 2) positions of a 2D Points layer in the pixels of a 2D Image layer (through world
    coordinates, so differing scales or offsets of the two layers do not matter)."""
    pts = np.asarray(points.data, float)[:, -2:]
    same = all(
        np.allclose(getattr(points, k)[-2:], getattr(image, k)[-2:]) for k in ("scale", "translate")
    )
    if same and np.allclose(points.affine.affine_matrix, image.affine.affine_matrix):
        return pts
    return np.array([image.world_to_data(points.data_to_world(p)) for p in pts]).reshape(-1, 2)


def _index_of(positions: np.ndarray, point: np.ndarray) -> int:
    """The index of ``point`` among ``positions`` (the nearest one)."""
    return int(np.argmin(((np.asarray(positions, float) - point) ** 2).sum(axis=1)))


def _next_present(positions: np.ndarray, queue: np.ndarray, k: int) -> int:
    """The first place from ``k`` on in the review ``queue`` whose point is still in the layer
    (the user may have deleted or moved the points reviewed so far)."""
    pos = np.asarray(positions, float)
    while k < len(queue) and (not len(pos) or ((pos - queue[k]) ** 2).sum(axis=1).min() > 1e-6):
        k += 1
    return k


def _zoom_to_neighbours(viewer, positions: np.ndarray, pixel: float, spacings: float = 12) -> None:
    """Zoom in (never out) until the canvas's shorter side spans about ``spacings`` median
    nearest-neighbour distances of ``positions`` (px; ``pixel`` world units each): the point
    under review and its neighbours, large enough to click on."""
    from scipy.spatial import cKDTree

    from napari_microml.runtime.widget import canvas_view

    view = canvas_view(viewer)
    if view is None or len(positions) < 2:
        return
    nn = float(np.median(cKDTree(positions).query(positions, k=2)[0][:, 1])) * pixel
    span = min(view[1] - view[0], view[3] - view[2])
    if nn > 0 and span > spacings * nn:
        camera = viewer_camera(viewer)
        camera.zoom = float(camera.zoom) * span / (spacings * nn)


class TeachAtomsWidget(ToolWidget):
    tool_name = "teach_atom_finder"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer  # the pair list reads the layers while it is built
        self._extra_pairs: list[tuple[str, str]] = []
        self._snapshots: dict = {}  # points layer's unique id → its points when first seen
        self._history: list[dict] = []
        self._edited: set[str] = set()  # pairs already selected because their points were edited
        self._review: tuple = (None, np.zeros((0, 2)), [], 0)  # layer, queue, reasons, next
        self.pairs = Select(
            label="Images ← points",
            choices=self._pair_choices,
            tooltip="Image layers and the Points layers you corrected on them; all "
            "selected pairs are used",
        )
        self.pairs.native.setMaximumHeight(90)
        _fit_column(self.pairs.native)
        self.pair_image = create_widget(annotation=napari.layers.Image, label="Other pair: image")
        self.pair_points = create_widget(annotation=napari.layers.Points, label="      points")
        self.add_pair = PushButton(text="Add this pair")
        self.base = ComboBox(
            label="Start from",
            choices=lambda _w: _atom_models(),
            value="default",
            tooltip="The model to fine-tune; the new one is saved only when it finds your "
            "held-out points better than this one does",
        )
        self.base_note = Label(label="", value="")
        self._base_suggested = ("default", "")  # what the pairs' finder results suggest, and why
        self._base_followed = True  # follow the suggestion until the user picks another model
        self._base_quiet = False  # True while the dock itself sets or refreshes the list
        self.steps = SpinBox(
            label="Most steps",
            value=DEFAULT_STEPS,
            min=1,
            max=20000,
            tooltip="Training stops earlier when the F1 on your held-out points stops improving",
        )
        self.model_name = LineEdit(
            label="New model name", value="", tooltip="Empty: tuned-<date>-<time>"
        )
        self.edits = Label(label="Your edits", value="–")
        self.edits.tooltip = EDITS_TIP
        self.next_uncertain = PushButton(text="Review: next least certain point")
        self.next_uncertain.tooltip = (
            "Centre the view on the next detection worth checking: score "
            "near the threshold, uncertain position, or an odd spacing"
        )
        self.my_models = ComboBox(label="My models", choices=lambda _w: _user_models())
        self.delete_button = PushButton(text="Delete model")
        super().__init__(
            viewer,
            [
                self.pairs,
                self.pair_image,
                self.pair_points,
                self.add_pair,
                self.base,
                self.base_note,
                self.steps,
                self.model_name,
            ],
        )
        self.run_button.text = "Fine-tune"
        for label in (self.edits, self.base_note):
            label.native.setWordWrap(True)
            label.native.setMinimumWidth(220)  # wraps in the column instead of widening the dock
        for combo in (self.pair_image, self.pair_points, self.base, self.my_models):
            _fit_column(combo.native)
        self.extend(
            [
                self.next_uncertain,  # right under the status it answers in: both in view
                self.edits,
                Container(
                    widgets=[self.my_models, self.delete_button], layout="horizontal", labels=False
                ),
            ]
        )
        self._plot = self._make_plot()  # after the last magicgui insert: it counts no Qt widget
        self.add_pair.changed.connect(self._on_add_pair)
        self.next_uncertain.changed.connect(self._on_next_uncertain)
        self.delete_button.changed.connect(self._on_delete)
        self.pairs.changed.connect(self._update_edits)
        self.base.changed.connect(self._on_base_changed)
        self.my_models.changed.connect(
            lambda *_: setattr(self.delete_button, "text", "Delete model")
        )
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._on_layers_changed)
        for layer in viewer.layers:
            self._watch(layer)
        self.pairs.value = list(self.pairs.choices)
        self._update_edits()

    # -- pairs ----------------------------------------------------------------------------
    def _pair_choices(self, _widget=None) -> list[str]:
        layers = self.viewer.layers
        found = []
        for pts in layers:
            if not isinstance(pts, napari.layers.Points) or not pts.name.endswith(" atoms"):
                continue
            image = pts.name.removesuffix(" atoms")
            if image in layers and isinstance(layers[image], napari.layers.Image):
                found.append((image, pts.name))
        found += [
            p for p in self._extra_pairs if p[0] in layers and p[1] in layers and p not in found
        ]
        return [ARROW.join(p) for p in found]

    def _selected_pairs(self) -> list[tuple]:
        layers, out = self.viewer.layers, []
        for text in self.pairs.value:
            image, points = text.split(ARROW)
            if image in layers and points in layers:  # a layer may be going away right now
                out.append((layers[image], layers[points]))
        return out

    def reset_choices(self, *args):
        chosen = set(self.pairs.value)
        with self._quiet_base():
            super().reset_choices(*args)
        # a new finder result is not a correction: its pair is selected once its points are edited
        self.pairs.value = [c for c in self.pairs.choices if c in chosen]

    def _on_layers_changed(self, event=None):
        if event is not None and getattr(event, "value", None) is not None:
            self._watch(event.value)
        self.reset_choices()
        self._update_edits()

    def _watch(self, layer):
        if isinstance(layer, napari.layers.Points):
            layer.events.data.connect(self._on_points_changed)
            layer.events.name.connect(lambda *_: self.reset_choices())

    def _on_points_changed(self, *_):
        from qtpy.QtCore import QTimer

        # on the next event-loop turn: a finder run sets the data before its new provenance, and
        # the provenance tells its points from the user's edits
        QTimer.singleShot(0, self._update_edits)

    def _on_add_pair(self, *_):
        image, points = self.pair_image.value, self.pair_points.value
        if image is None or points is None:
            self._say("Pick an image layer and the points layer you corrected on it.")
            return
        pair = (image.name, points.name)
        if pair not in self._extra_pairs:
            self._extra_pairs.append(pair)
        self.reset_choices()
        self.pairs.value = list({*self.pairs.value, ARROW.join(pair)})
        self._update_edits()

    # -- edits --------------------------------------------------------------------------------
    def _snapshot(self, points) -> np.ndarray:
        """The points the Atom finder wrote to the layer, or (points it did not write) the
        layer's points when this widget first saw them.

        A new finder run on the layer (a new provenance record) starts a new snapshot: its
        points are the finder's, not the user's edits.
        """
        record = points.metadata.get("napari_microml") or {}
        key = (
            getattr(points, "unique_id", points.name),  # napari hands plugins proxies: no id()
            record.get("created"),
            repr(record.get("model")),
            repr(record.get("parameters")),
        )
        if key not in self._snapshots:
            created, found = FOUND_POINTS.get(key[0], (None, None))
            if found is None or created is None or created != record.get("created"):
                found = np.asarray(points.data, float)[:, -2:].copy()  # not the finder's run
            self._snapshots[key] = found
        return self._snapshots[key]

    def _update_edits(self, *_):
        lines, select = [], []
        for text in self.pairs.choices:
            name = text.split(ARROW)[1]
            if name not in self.viewer.layers:
                continue
            points = self.viewer.layers[name]
            counts = count_edits(self._snapshot(points), np.asarray(points.data, float)[:, -2:])
            if any(counts.values()) and text not in self._edited:
                self._edited.add(text)  # selected once; the user may deselect it again
                select.append(text)
            lines.append(
                (
                    points.name,
                    f": +{counts['added']} added, −{counts['removed']} removed, "
                    f"{counts['moved']} moved",
                )
            )
        self.edits.value = "\n".join(short(n) + c for n, c in lines) or "–"
        self.edits.tooltip = "\n".join([EDITS_TIP + ":", *(n + c for n, c in lines)])
        if select:
            self.pairs.value = list(dict.fromkeys([*self.pairs.value, *select]))
        self._suggest_base()

    # -- the model to start from ------------------------------------------------------------
    @contextmanager
    def _quiet_base(self):
        """Changes of the Start-from list made inside are the dock's, not the user's choice."""
        before, self._base_quiet = self._base_quiet, True
        try:
            yield
        finally:
            self._base_quiet = before

    def _suggest_base(self) -> None:
        """Start from the model the Atom finder used on the selected pairs (all pairs while
        none is selected), unless the user has picked another."""
        pairs = self._selected_pairs() or [
            (None, self.viewer.layers[str(t).split(ARROW)[1]])
            for t in self.pairs.choices
            if str(t).split(ARROW)[1] in self.viewer.layers
        ]
        self._base_suggested = start_model(pairs, [str(c) for c in self.base.choices])
        if self._base_followed and self.base.value != self._base_suggested[0]:
            with self._quiet_base():
                self.base.value = self._base_suggested[0]
        self._show_base_note()

    def _on_base_changed(self, *_):
        if self._base_quiet:
            return
        self._base_followed = self.base.value == self._base_suggested[0]
        self._show_base_note()

    def _show_base_note(self) -> None:
        model, why = self._base_suggested
        if self.base.value == model:
            self.base_note.value = f"({why})" if why else ""
        else:
            self.base_note.value = f"(your choice; suggested: {model}, {why})"

    def _refresh_base_choices(self) -> None:
        picked = self.base.value
        with self._quiet_base():
            self.base.reset_choices()
        if self.base.value != picked:  # the model picked was deleted: follow the finder again
            self._base_followed = True
        self._suggest_base()

    # -- review -------------------------------------------------------------------------------
    def _review_pairs(self) -> list[tuple]:
        """The (image, points) pairs to review: the selected ones, else every finder result
        listed (proofreading comes before the edits that select a pair)."""
        return self._selected_pairs() or self._listed_pairs()

    def _listed_pairs(self) -> list[tuple]:
        layers, out = self.viewer.layers, []
        for text in self.pairs.choices:
            image, points = str(text).split(ARROW)
            if image in layers and points in layers:
                out.append((layers[image], layers[points]))
        return out

    def _show_pair(self, image) -> None:
        """Show ``image`` and its points when a review hid them: a re-run's result drawn over
        another image would be read against the wrong one."""
        if image.visible:
            return
        pairs = self._listed_pairs()
        keep = [j for j, (im, _) in enumerate(pairs) if im.name == image.name]  # proxies: no `is`
        if keep:
            self._show_only(pairs, keep[0])
        else:
            image.visible = True

    def _on_next_uncertain(self, *_):
        pairs = self._review_pairs()
        if not pairs:
            self._say("Nothing to review: run the Atom finder on an image first.")
            self._show_review()
            return
        names = [p.name for _, p in pairs]
        name, queue, words, k = self._review
        if name in names:
            k = _next_present(np.asarray(self.viewer.layers[name].data)[:, -2:], queue, k)
        if name not in names or k >= len(queue):  # start, or go on with the next image
            name = names[0] if name not in names else names[(names.index(name) + 1) % len(names)]
            layer = self.viewer.layers[name]
            meta = (layer.metadata.get("napari_microml") or {}).get("parameters", {})
            pos = np.asarray(layer.data, float)[:, -2:]
            order, reasons = review_order(
                pos, features=layer.features, threshold=float(meta.get("threshold", 0.5))
            )
            # positions, not indices: a point deleted or added meanwhile shifts the indices
            queue, words, k = pos[order], [reasons[i] for i in order], 0
        layer = self.viewer.layers[name]
        if not len(queue):
            self._say(f"{name} has no points to review.")
            self._show_review()
            return
        hidden = self._show_only(pairs, names.index(name)) if k == 0 else ""
        i = _index_of(np.asarray(layer.data, float)[:, -2:], queue[k])
        self._review = (name, queue, words, k + 1)
        world = layer.data_to_world(np.asarray(layer.data)[i])
        camera = viewer_camera(self.viewer)
        camera.center = tuple(world[-2:])
        _zoom_to_neighbours(self.viewer, queue, float(np.abs(layer.scale[-1])))
        self.viewer.layers.selection.active = layer
        layer.selected_data = {i}
        self._say(f"{layer.name}, point {k + 1} of {len(queue)} to check: {words[k]}.{hidden}")
        self._show_review()

    def _show_only(self, pairs: list[tuple], keep: int) -> str:
        """Show the pair under review and hide the other pairs' layers (images of one size lie
        on top of each other: the points were read against another image). Returns a note."""
        others = [
            layer
            for j, pair in enumerate(pairs)
            if j != keep
            for layer in pair
            if all(layer.name != mine.name for mine in pairs[keep])
        ]
        for layer in pairs[keep]:
            layer.visible = True
        shown = [layer for layer in others if layer.visible]
        for layer in shown:
            layer.visible = False
        return f" ({len(shown)} other layers hidden while you review this image)" if shown else ""

    def _show_review(self) -> None:
        """Scroll a squeezed dock so the Review button and the reason it gives are in view."""
        self.native.ensureWidgetVisible(self.next_uncertain.native, 0, 4)
        self.native.ensureWidgetVisible(self.status.native, 0, 4)

    # -- fine-tune ------------------------------------------------------------------------
    def make_job(self):
        pairs = self._selected_pairs()
        if not pairs and self.pairs.choices and not self._edited:
            names = [repr(str(t).split(ARROW)[1]) for t in self.pairs.choices]
            verb = "has" if len(names) == 1 else "have"
            raise ValueError(
                f"{', '.join(names)} {verb} no corrections yet: add, delete or move points "
                "first (the Atom finder's own points teach it nothing), then fine-tune."
            )
        if not pairs:
            raise ValueError(
                "Select at least one image with its corrected points (run the Atom "
                "finder, correct its points, then fine-tune)."
            )
        layers, positions, names, contrasts, scans = {}, [], [], set(), []
        for image, points in pairs:
            if image.rgb or image.ndim != 2 or points.ndim != 2:
                raise ValueError(
                    f"{image.name!r}: fine-tuning needs single 2D grey images; pick one "
                    "frame of a stack as its own layer."
                )
            layers[f"image{len(layers)}"] = image  # read in the worker, not on the GUI thread
            positions.append(_in_image_pixels(points, image))
            names.append(image.name)
            scans.append(scan_kind(image.metadata))  # levelled in training as the finder levels it
            # the contrast the finder used on this image (its provenance), so the model learns
            # the frames the finder showed the network
            record = points.metadata.get("napari_microml") or {}
            contrasts.add((record.get("parameters") or {}).get("contrast", "auto"))
        if {"bright", "dark"} <= contrasts:
            raise ValueError(
                "Some of these images have bright columns and some dark ones; teach one "
                "kind at a time."
            )
        contrast = contrasts.pop() if len(contrasts) == 1 else "auto"
        self._suggest_base()  # the pairs may have changed since the list was last refreshed
        used, why = self._base_suggested
        kwargs = dict(
            base=self.base.value,
            # starting elsewhere, the new model must still beat the one the user was running
            in_use=used if why == FROM_FINDER and used != self.base.value else None,
            steps=int(self.steps.value),
            device=self.device_choice.value,
            name=self.model_name.value.strip() or None,
            image_names=names,
            contrast=contrast,
            scan=scans,
        )
        self._history = []
        self._draw()

        def work(**arrays):
            images = [np.asarray(arrays[f"image{i}"], np.float32) for i in range(len(arrays))]
            return (yield from finetune_atoms_iter(images, positions, **kwargs))

        return Job(work, self.show_result, inputs=layers)

    def start(self, job=None):
        worker = super().start(job)
        if worker is not None:
            self.run_button.text = "Stop"
        return worker

    def _on_finished(self):
        super()._on_finished()
        if self.worker is None:
            self.run_button.text = "Fine-tune"

    def _finish(self):  # where ToolWidget versions that queue GUI updates end a run
        super()._finish()
        self.run_button.text = "Fine-tune"

    def cancel(self):
        super().cancel()
        self._say("Stopping… (no model is written)")

    def cancelled_message(self) -> str:
        return "Stopped: no model was written; the Atom finder keeps the model it had."

    def show_loss(self, loss: Loss) -> None:
        self._history.append({"step": loss.step, **loss.values})
        self._draw()
        if len(self._history) == 1:  # the curve has just appeared below the status line
            self._show_status()

    def _scroll_to_status(self) -> None:
        plot = getattr(self, "_plot", None)  # None while the dock is being built
        if plot is not None and plot.isVisibleTo(self._controls):  # the curve explains the status
            self._make_room(plot)  # here: the status and curve are laid out by now
            self.native.ensureWidgetVisible(plot, 0, 0)
        super()._scroll_to_status()

    def _make_room(self, bottom) -> None:
        """Ask the window for the dock height that shows Run down to the Qt widget ``bottom``:
        docked under or over another tool, this dock gets ~200 px, and the training curve below
        the status line stayed out of sight for the whole run."""
        from qtpy.QtCore import QPoint, Qt
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        dock = self.native.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        window = dock.parentWidget() if dock is not None else None
        while window is not None and not isinstance(window, QMainWindow):
            window = window.parentWidget()
        if dock is None or window is None or dock.isFloating():
            return
        self._controls.layout().activate()  # the curve's place, now that it is shown
        top = self.run_button.native.mapTo(self._controls, QPoint(0, 0)).y()
        end = bottom.mapTo(self._controls, QPoint(0, bottom.sizeHint().height())).y()
        frame = dock.height() - self.native.viewport().height()  # title bar and margins
        need = end - top + frame + 8
        if dock.height() < need:
            window.resizeDocks([dock], [need], Qt.Orientation.Vertical)

    def show_result(self, result):
        from napari.utils.notifications import show_info, show_warning

        self.my_models.reset_choices()
        self._refresh_base_choices()
        if result.kept_base:
            self._say(result.reason)
            show_warning(result.reason)
            return
        finders = self._select_in_finders(result.name)
        taught = {im.get("name") for im in result.card.get("images", [])}
        targets = self._rerun_targets(finders[0], taught) if finders else []
        if targets:
            where = (
                " It is now selected in the Atom finder, which runs it on "
                f"{', '.join(repr(t.name) for t in targets)} (your corrected points stay as "
                "they are)."
            )
            self._rerun(finders[0], targets)
        elif finders:
            where = " It is now selected in the Atom finder: press Run there on your other images."
        else:
            where = " Choose it in the Atom finder's Model list."
        self._say(result.reason + where)
        show_info(result.reason)

    def _select_in_finders(self, name: str | None) -> list:
        """Refresh the Model list of every open Atom finder (and select ``name`` there)."""
        from napari_microml.atoms.widget import AtomFinderWidget, _model_choices

        found = []
        for widget in list(self.viewer.window.dock_widgets.values()):
            if isinstance(widget, AtomFinderWidget):
                # a callable: later layer events refresh the list too ('auto' stays first)
                widget.model.choices = lambda _w: _model_choices()
                if name is not None:
                    widget.model.value = name
                    widget.native.ensureWidgetVisible(widget.model.native)  # show the change
                found.append(widget)
        return found

    def _rerun_targets(self, finder, taught: set) -> list:
        """The images to show the new model on at once, never overwriting a correction.

        Those whose Atom finder result is still as the finder left it (not taught on, no point
        edited); else the finder's selected image when it was not taught on.
        """
        layers, out = self.viewer.layers, []
        for text in self.pairs.choices:
            image, points = str(text).split(ARROW)
            if image in taught or text in self._edited or image not in layers:
                continue
            if points != f"{image} atoms" or points not in layers:
                continue  # a pair added by hand: the user's own points, not a finder result
            counts = count_edits(
                self._snapshot(layers[points]), np.asarray(layers[points].data, float)[:, -2:]
            )
            if not any(counts.values()):
                out.append(layers[image])
        chosen = finder.image_layer.value
        if not out and chosen is not None and chosen.name not in taught:
            if f"{chosen.name} atoms" not in layers:  # no result yet: nothing to overwrite
                out.append(chosen)
        return out

    def _rerun(self, finder, images: list) -> None:
        """Run the Atom finder on ``images`` one after the other (each when the last is done)."""
        from qtpy.QtCore import QTimer

        pending = list(images)
        timer = QTimer(self.native)
        timer.setInterval(50)

        def next_image():
            if finder.busy:
                return
            if not pending:
                timer.stop()
                return
            layer = pending.pop(0)
            if layer in self.viewer.layers:
                self._show_pair(layer)
                finder.image_layer.value = layer
                finder.start()

        timer.timeout.connect(next_image)
        timer.start()
        next_image()

    # -- user models --------------------------------------------------------------------------
    def _on_delete(self, *_):
        from napari_microml.nets.user_models import delete_user_model

        name = self.my_models.value
        if not name:
            self._say("You have no fine-tuned models to delete.")
            return
        if self.delete_button.text != "Really delete?":  # a second click confirms
            self.delete_button.text = "Really delete?"
            self._say(f"Click again to delete your model {name!r} for good.")
            return
        delete_user_model(name)
        self.delete_button.text = "Delete model"
        self.my_models.reset_choices()
        self._refresh_base_choices()
        self._select_in_finders(None)
        self._say(f"Deleted your model {name!r}.")

    # -- plot -------------------------------------------------------------------------------
    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(3.2, 2.0), dpi=90, tight_layout=True)
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumHeight(170)
        layout = self._controls.layout()  # right under the status: a run's curve beside its text
        layout.insertWidget(layout.indexOf(self.ran_on.native.parentWidget()) + 1, canvas)
        self._axes = figure.add_subplot(111)
        self._axes_f1 = self._axes.twinx()
        self._draw()
        return canvas

    def _draw(self):
        if not hasattr(self, "_axes"):
            return
        ax, ax2 = self._axes, self._axes_f1
        ax.clear()
        ax2.clear()
        rows = [r for r in self._history if r.get("loss") is not None]
        ax.plot(  # markers: the first value alone is a point, not a line
            [r["step"] for r in rows], [r["loss"] for r in rows], "o-", color="#1f77b4", ms=3
        )
        ax2.plot(
            [r["step"] for r in self._history],
            [r["val_f1"] for r in self._history],
            "o-",
            color="#d62728",
            ms=3,
            label="held-out F1",
        )
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8, color="#1f77b4")
        ax2.set_ylabel("held-out F1", fontsize=8, color="#d62728")
        ax2.yaxis.set_label_position("right")  # clear() puts it back on the left
        ax2.yaxis.tick_right()
        ax2.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax2.tick_params(labelsize=7)
        self._axes.figure.canvas.setVisible(bool(self._history))  # no empty axes before a run
        self._axes.figure.canvas.draw_idle()
