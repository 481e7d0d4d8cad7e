"""The base dock widget every tool reuses: device picker, Run/Cancel, progress, status.

A tool subclasses :class:`ToolWidget`, adds its own controls, and implements

* ``make_job()`` → a :class:`Job`: the generator function that runs in a napari worker thread
  (it gets the data of the job's input layers, read there and never on the GUI thread, yields
  :class:`~napari_microml.runtime.workers.Progress`, ``Loss`` or ``Partial`` messages or a
  core's progress tuples, and returns a result), the handler that writes layers from that
  result on the main thread, and the input layers. The worker never writes layers or widget
  state; whatever the handler needs comes in the result or is bound into the handler;
* optionally ``show_partial(value)`` / ``show_loss(loss)`` to show a ``Partial`` result or a
  training curve while the job goes on.

Bad input found on the GUI thread (from shapes and settings) or in the worker (a ValueError, by
the cores' contract) is answered with "Cannot run: <the sentence>" and a napari warning; any
other exception is a failure, shown by napari with its traceback.

Progress messages are throttled (at most every :data:`PROGRESS_INTERVAL_S`; the latest one held
back is shown when the interval ends) so a fast loop does not flood the event loop; after a
result with physical units the scale bar is shown, and when a run added a layer that lies
outside the canvas view the view is refit (:func:`fit_view_to`). The dock scrolls, so a tall
tool never makes the window taller than the screen; extra Qt widgets (plots) go in with
:meth:`ToolWidget.add_native`.

Cancel calls ``worker.quit()``; the generator stops at its next yield and the result handler
is never called, so a cancelled run leaves no half-written layer; the status then says
"Cancelled" and the progress bar is cleared. A result that reaches the GUI thread after Cancel
was pressed is dropped the same way. Once a result is being written, the button is disabled and
reads "Showing results…": the run can no longer be cancelled, and the button does not offer it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton

from napari_microml.runtime.device import CHOICES, describe_device
from napari_microml.runtime.provenance import KEY
from napari_microml.runtime.threads import match_torch_threads, start_numba_threads
from napari_microml.runtime.workers import Loss, Message, Partial, as_message, typed

PROGRESS_INTERVAL_S = 0.1
UI_TURN_S = 0.05  # queued result updates run together until a turn has taken this long
MIN_DOCK_HEIGHT = 200  # px: a tool dock shrinks to this (and scrolls) when the column is full
STATUS_FOLLOW_S = 2.0  # s after a run: a dock added late (a result table) re-scrolls to the status


@dataclass
class Job:
    """What one run of a tool needs.

    Attributes
    ----------
    work
        Generator function run in the worker thread. It is called with one keyword argument
        per entry of ``inputs``: that layer's data as a numpy array, read in the worker. It
        yields progress messages and returns the result.
    on_result
        Called on the main thread with the result; writes the layers.
    inputs
        ``{argument name: napari layer}``: the layers whose data ``work`` needs.
    """

    work: Callable[..., Generator[Any, Any, Any]]
    on_result: Callable[[Any], None]
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def run(self) -> Generator[Message, None, Any]:
        """The worker's body: read the input layers' data here, then run ``work``. Bad input
        (a ValueError, by the cores' contract) comes back as :class:`Refused`, not a crash."""
        match_torch_threads()  # napari reuses worker threads: not the count an earlier job left
        try:
            arrays = {key: np.asarray(layer.data) for key, layer in self.inputs.items()}
            return (yield from typed(self.work(**arrays)))
        except ValueError as err:
            return Refused(str(err))
        except RuntimeError as err:
            # superqt ends silently on a RuntimeError (it takes one for a deleted worker): the
            # dock stayed "Running…" for good, e.g. after torch ran out of memory
            raise RunFailed(str(err) or type(err).__name__) from err


class RunFailed(Exception):
    """A run's RuntimeError, passed on so the dock says "Failed: …" and is ready again."""


@dataclass(frozen=True)
class Refused:
    """A job's answer to bad input found in the worker: the sentence for the status line."""

    reason: str


def layer_picker(annotation, **kwargs) -> ComboBox:
    """A layer chooser whose choices follow the viewer's layers (magicgui's widget for a
    napari layer annotation, e.g. ``napari.layers.Image``); ``kwargs`` go to ``create_widget``."""
    from magicgui.widgets import create_widget

    return cast(ComboBox, create_widget(annotation=annotation, **kwargs))


def opened_from_file(event) -> Any:
    """The layer a ``viewer.layers.events.inserted`` event added when *File → Open* read it
    from a file or *File → Open Sample* made it (the first image of a sample of several), else
    ``None`` (a tool's result or a layer made in the console has neither a path nor a sample)."""
    import napari

    layer = getattr(event, "value", None)
    source = getattr(layer, "source", None)
    sample = getattr(source, "sample", None)
    if sample and isinstance(layer, napari.layers.Image):
        layers, index = getattr(event, "source", None) or [], getattr(event, "index", None)
        below = layers[index - 1] if isinstance(index, int) and 0 < index <= len(layers) else None
        if isinstance(below, napari.layers.Image) and below.source.sample == sample:
            return None  # a sample of several images (a scan after its truth): its first counts
    return layer if getattr(source, "path", None) or sample else None


def pick(picker: ComboBox, layer) -> bool:
    """Set a layer chooser to ``layer``, matched by name among its choices (napari hands a
    plugin proxies of its layers, so identity cannot be trusted); False when it is not one."""
    picker.reset_choices()  # a layer inserted a moment ago may not be among them yet
    for choice in picker.choices:
        if getattr(choice, "name", None) == getattr(layer, "name", None):
            picker.value = choice
            return True
    return False


def preload(*modules: str) -> None:
    """Import what a tool's worker will need while its dock opens: an import in the worker
    holds the GIL (torch, gpytorch: seconds) and would freeze the window mid-run."""
    import importlib

    for name in modules:
        importlib.import_module(name)


def name_colour_bar(viewer, text: str) -> None:
    """Name the map of the colour bar on the canvas (napari's colour bar has no title).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose canvas text overlay (top right, beside the colour bar) shows ``text``.
    text : str
        The map and its unit, e.g. ``"exx (%), ±2 %"``.
    """
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    overlay = (overlays or {}).get("text") if hasattr(overlays, "get") else None
    overlay = overlay or getattr(viewer, "text_overlay", None)  # napari < 0.9
    if overlay is None:
        return
    overlay.text = f"colour bar: {text}"
    overlay.position = "top_right"
    tiling = getattr(getattr(viewer, "canvas", None), "overlay_tiling", None)
    if tiling is not None:  # the name above the bar: side by side they took ~300 px of width
        tiling.top_right = "vertical"
    overlay.font_size = 10
    overlay.visible = True


def show_scale_bar(viewer, layers) -> None:
    """Turn the scale bar on when one of ``layers`` has physical units in the displayed plane."""
    for layer in layers:
        units = getattr(layer, "units", None)
        if units is None or len(units) < 2:
            continue
        if any(str(u) not in ("pixel", "px", "") for u in units[-2:]):
            overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
            bar = getattr(overlays, "scale_bar", None) or viewer.scale_bar  # napari < 0.9
            if not bar.visible:  # bottom right sits under the right-hand dock's edge
                bar.position = "bottom_left"
                bar.visible = True
            return


def physical_kwargs(layer, ndim: int | None = None) -> dict:
    """``scale``, ``translate``, ``units`` and ``axis_labels`` of ``layer`` (last ``ndim`` axes)."""
    if layer is None:
        return {}
    n = layer.ndim if ndim is None else ndim
    out = {"scale": tuple(layer.scale[-n:]), "translate": tuple(layer.translate[-n:])}
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(str(u) for u in units[-n:])
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        out["axis_labels"] = tuple(labels[-n:])
    return out


def pixel_size_nm(layer) -> float | None:
    """The layer's in-plane pixel size in nm when its units say so, else ``None``."""
    from napari_microml.runtime.units import nm_per_pixel

    if layer is None:
        return None
    return nm_per_pixel(scale=layer.scale, units=getattr(layer, "units", None))


def rescale_combo(trained: str) -> ComboBox:
    """The "Rescale" choice of the lattice tools (auto/always/off; see runtime/spacing.py)."""
    from napari_microml.runtime.spacing import RESCALE_MODES, TARGET

    return ComboBox(
        label="Rescale",
        choices=list(RESCALE_MODES),
        value="auto",
        tooltip=f"auto: a lattice whose period is outside the trained {trained} is "
        "resampled for the network (results stay in your pixels); always: any "
        f"lattice is resampled to a {TARGET:g} px period - try it when columns are "
        "missed; off: never",
    )


def resample_note(parameters: dict) -> str:
    """A sentence for the status line when a lattice tool ran its network on a resampled copy
    (``parameters['zoom']`` ≠ 1; see runtime/spacing.py), else ''."""
    from napari_microml.runtime.spacing import TARGET

    zoom, period = parameters.get("zoom", 1.0), parameters.get("estimated_period_px")
    if zoom == 1.0:
        return ""
    lattice = f" (lattice period {period:g} px → {TARGET:g} px)" if period else ""
    return f" The network saw a copy resampled ×{zoom:g}{lattice}; results are on your pixels."


def levelling_note(parameters: dict) -> str:
    """A sentence for the status line when a scanning-probe frame was levelled first
    (``parameters['levelling']``; see runtime/level.py), else ''."""
    said = parameters.get("levelling")
    if not said:
        return ""
    what = said.removeprefix("levelled: ")
    return f" Levelled as a scanning-probe scan first ({what}); your layer is unchanged."


def viewer_camera(viewer):
    """``viewer.scene.camera`` (napari ≥ 0.9), else the older ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_view(viewer) -> tuple[float, float, float, float] | None:
    """The world rectangle the canvas shows, ``(row0, row1, col0, col1)`` in the displayed plane,
    or ``None`` when the canvas has no size yet (a window never shown)."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is None:
        size = getattr(viewer, "_canvas_size", None)  # napari < 0.9
    if size is None or min(size) <= 1:
        return None
    camera = viewer_camera(viewer)
    height, width = float(size[0]), float(size[1])
    cy, cx = (float(c) for c in camera.center[-2:])
    zoom = float(camera.zoom)
    return (
        cy - height / 2 / zoom,
        cy + height / 2 / zoom,
        cx - width / 2 / zoom,
        cx + width / 2 / zoom,
    )


def fraction_in_view(viewer, layer) -> float:
    """Fraction (0-1) of ``layer``'s displayed extent that lies inside the canvas view (1 when
    the view is unknown)."""
    view = canvas_view(viewer)
    if view is None:
        return 1.0
    extent = np.asarray(layer.extent.world, float)
    offset = viewer.dims.ndim - extent.shape[1]  # a layer's axes are the viewer's last ones
    axes = [d - offset for d in viewer.dims.displayed if d >= offset]
    if len(axes) < 2 or not np.all(np.isfinite(extent[:, axes])):
        return 1.0
    extent = extent[:, axes]
    (y0, x0), (y1, x1) = extent[0, -2:], extent[1, -2:]
    fy = max(0.0, min(y1, view[1]) - max(y0, view[0])) / max(y1 - y0, 1e-9)
    fx = max(0.0, min(x1, view[3]) - max(x0, view[2])) / max(x1 - x0, 1e-9)
    return float(fy * fx)


def framed(layers) -> list:
    """``layers`` without Vectors layers (else all of them): arrows drawn magnified can reach far
    past the image (a 4096² mosaic's seams: hundreds of px × 10), so the view frames what they
    are drawn on."""
    import napari

    kept = [layer for layer in layers if not isinstance(layer, napari.layers.Vectors)]
    return kept or list(layers)


def fit_view_to(viewer, layers, *, min_fraction: float = 0.98) -> bool:
    """Refit the view to ``layers`` (their Vectors aside, see :func:`framed`) when one of them is
    not shown whole in the canvas: a new result must be on screen. Returns whether the view was
    refit."""
    if any(fraction_in_view(viewer, layer) < min_fraction for layer in framed(layers)):
        viewer.reset_view()
        everything = list(viewer.layers)
        if len(framed(everything)) < len(everything):
            _fit_2d(viewer, framed(everything))  # reset_view fitted the arrows' tips too
        return True
    return False


def _fit_2d(viewer, layers, margin: float = 0.05) -> None:
    """Centre and zoom a 2D view on ``layers``' extent, as napari's reset_view does on all."""
    view = canvas_view(viewer)
    if view is None or viewer.dims.ndisplay != 2:
        return
    extent = np.stack([np.asarray(layer.extent.world, float)[:, -2:] for layer in layers])
    low, high = np.nanmin(extent[:, 0], axis=0), np.nanmax(extent[:, 1], axis=0)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        return
    camera = viewer_camera(viewer)
    zoom = float(camera.zoom)
    size = np.array([view[1] - view[0], view[3] - view[2]]) * zoom  # canvas px
    center = list(camera.center)
    center[-2:] = list((low + high) / 2)
    camera.center = tuple(center)
    camera.zoom = float((1 - margin) * np.min(size / np.maximum(high - low, 1e-9)))


def clear_colour_bar(viewer) -> bool:
    """Move the layers out of the canvas's top-right corner where a colour bar is shown (a tall
    canvas fits the image to its width: the bar hid its corner): down, when the canvas has the
    height for it, else zoom out about the layers' centre. Returns whether the view changed."""
    bars = [
        bar
        for layer in viewer.layers
        if layer.visible and (bar := getattr(layer, "colorbar", None)) is not None and bar.visible
    ]
    view = canvas_view(viewer)
    if not bars or view is None:
        return False
    camera = viewer_camera(viewer)
    zoom = float(camera.zoom)
    width = (view[3] - view[2]) * zoom
    bar_w, bar_h = (float(v) for v in tuple(getattr(bars[0], "size", (25, 220)))[:2])
    clear_w, clear_h = bar_w + 55, bar_h + 50  # tick labels beside it, its name above it
    shown = framed([layer for layer in viewer.layers if layer.visible])
    extent = np.stack([np.asarray(layer.extent.world, float)[:, -2:] for layer in shown])
    extent = np.stack([np.nanmin(extent[:, 0], axis=0), np.nanmax(extent[:, 1], axis=0)])
    y0, y1, x0, x1 = extent[0, -2], extent[1, -2], extent[0, -1], extent[1, -1]
    right, top = (x1 - view[2]) * zoom, (y0 - view[0]) * zoom
    if not np.all(np.isfinite(extent)) or right <= width - clear_w or top >= clear_h:
        return False
    height = (view[1] - view[0]) * zoom
    if clear_h + (y1 - y0) * zoom <= height:  # room below the bar: same size, moved down
        center = list(camera.center)
        center[-2] = y0 - clear_h / zoom + height / (2 * zoom)
        camera.center = tuple(center)
        return True
    target = (width - 2 * clear_w) / max((x1 - x0) * zoom, 1e-9)
    if not 0.3 < target < 1.0:  # a canvas too narrow to keep the bar clear: leave it
        return False
    center = list(camera.center)
    center[-1] = (x0 + x1) / 2
    camera.center = tuple(center)
    camera.zoom = zoom * target
    return True


LAYER_KINDS = ("image", "labels", "points", "shapes", "surface", "tracks", "vectors")


def upsert_layer(
    viewer, name: str, kind: str, data, *, on_problem: Callable[[str], None] | None = None, **kwargs
):
    """Update the layer called ``name`` if it is a ``kind`` layer of the same dimensionality,
    else add a new one (replacing a layer of that name).

    Parameters
    ----------
    viewer
        The napari viewer.
    name
        The layer's name.
    kind
        One of :data:`LAYER_KINDS` (``viewer.add_<kind>``).
    data
        The layer's data.
    on_problem
        Called with a sentence for each property napari refused to set on an existing layer
        (its data are set either way); default: a napari warning.
    **kwargs
        Layer properties (``features``, ``metadata`` and any ``add_<kind>`` keyword).

    Returns
    -------
    napari.layers.Layer
        The updated or added layer.
    """
    import napari

    if kind not in LAYER_KINDS:
        raise ValueError(f"Unknown layer kind {kind!r}; expected one of {LAYER_KINDS}.")
    cls = getattr(napari.layers, kind.capitalize())
    old = viewer.layers[name] if name in viewer.layers else None
    ndim = np.ndim(data) if kind in ("image", "labels") else None
    if kind == "points":
        ndim = np.shape(data)[-1] if np.ndim(data) == 2 else None
    # isinstance works through napari's public-only proxy; a new ndim needs a new layer
    if old is not None and isinstance(old, cls) and ndim in (None, old.ndim):
        features = kwargs.pop("features", None)
        metadata = kwargs.pop("metadata", None)
        old.data = data
        if features is not None:
            old.features = features
        if metadata is not None:
            old.metadata.update(metadata)
        for key, value in kwargs.items():
            try:
                setattr(old, key, value)
            except (AttributeError, ValueError, TypeError) as err:
                sentence = f"Layer {name!r}: napari did not take its new {key} ({err})."
                if on_problem is None:
                    from napari.utils.notifications import show_warning

                    show_warning(sentence)
                else:
                    on_problem(sentence)
        return old
    if old is not None:
        viewer.layers.remove(name)
    adder = getattr(viewer, f"add_{kind}")
    return adder(data, name=name, **kwargs)


class ToolWidget(Container):
    """Base class: device selector, Run/Cancel button, progress bar and status lines."""

    tool_name = "tool"

    def __init__(self, viewer, controls: list):
        # not on the GUI thread at a first labels draw: numba's start sets that thread's
        # OpenMP count, which torch in napari's console would then use
        start_numba_threads()
        self.viewer = viewer
        self.worker: Any = None
        self.device_choice = ComboBox(label="Device", choices=list(CHOICES), value="auto")
        self.run_button = PushButton(text="Run")
        self.progress = ProgressBar(value=0, min=0, max=1, label="Progress")
        self.status = Label(label="Status", value="Ready.")
        self.ran_on = Label(label="Ran on", value="–")
        super().__init__(
            widgets=[
                *controls,
                self.device_choice,
                self.run_button,
                self.progress,
                self.status,
                self.ran_on,
            ],
        )
        self._controls = Container.native.fget(self)  # type: ignore[attr-defined]
        self._scroll = _dock_scroll_area(self._controls, self)
        for label in (self.status, self.ran_on):  # room for messages that arrive later
            label.native.setMinimumWidth(220)
            label.native.setWordWrap(True)
        self.run_button.changed.connect(self._on_run_clicked)
        from qtpy.QtCore import QTimer

        self._ui_queue: list[Callable[[], Any]] = []
        self._finish_pending = False
        self._layer_problems: list[str] = []
        self._last_progress = 0.0
        self._job: Job | None = None  # the running job (its result handler)
        self._layers_before: set = set()  # keys of the layers there when the run started
        self._status_timer = QTimer(self.native)  # a child: it goes with the dock
        self._status_timer.setSingleShot(True)
        self._status_timer.setInterval(50)
        self._status_timer.timeout.connect(self._scroll_to_status)
        self._follow_status_until = 0.0
        self._resize_watch = _on_resize(self._status_resized)
        self._scroll.viewport().installEventFilter(self._resize_watch)
        self._controls.installEventFilter(self._resize_watch)
        self._ui_timer = QTimer()
        self._ui_timer.setInterval(0)
        self._ui_timer.timeout.connect(self._next_ui)
        # a throttled message is shown later, not lost: the stage it names may last seconds
        self._held_progress: tuple[int, int, str] | None = None
        self._progress_timer = QTimer(self.native)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.timeout.connect(self._show_held_progress)
        self._scroll.destroyed.connect(self._abandon)

    @property
    def native(self):
        """The scroll area holding the controls: what napari docks, so a tall tool scrolls
        instead of making the window taller than the screen."""
        scroll = self.__dict__.get("_scroll")  # None while magicgui builds the controls
        return Container.native.fget(self) if scroll is None else scroll

    def add_native(self, widget, before=None) -> None:
        """Add a Qt widget (a plot canvas) below the controls, above the closing stretch, or
        above the row holding the Qt widget ``before``."""
        layout = self._controls.layout()
        index = layout.count() - 1
        rows = [layout.itemAt(i).widget() for i in range(layout.count())]
        for i, row in enumerate(rows):
            if (
                before is not None
                and row is not None
                and (row is before or row.isAncestorOf(before))
            ):
                index = i
                break
        layout.insertWidget(index, widget)

    # --- to implement in subclasses -------------------------------------------------------
    def make_job(self) -> Job:  # pragma: no cover - abstract
        """The :class:`Job` for a press of Run (raise ValueError for bad input)."""
        raise NotImplementedError

    def show_partial(self, value) -> None:
        """Show a :class:`~napari_microml.runtime.workers.Partial` result (default: nothing)."""

    def show_loss(self, loss: Loss) -> None:
        """Show a point of a training curve (default: nothing)."""

    # --- shared machinery -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _on_run_clicked(self, *_):
        if self.busy:
            self.cancel()
        else:
            self.start()

    def start(self, job: Job | None = None):
        """Run ``job`` (default: ``self.make_job()``) in a napari generator worker.

        Returns the worker, or ``None`` when the job could not start (the reason is on the
        status line).
        """
        from napari.qt.threading import create_worker

        try:
            job = job or self.make_job()
        except (ValueError, TypeError) as err:  # bad input: one sentence for the user
            self._cannot_run(err)
            return None
        except Exception as err:  # noqa: BLE001 - a bug must still say something on screen
            self._say(f"Failed before starting: {type(err).__name__}: {err}")
            from napari.utils.notifications import show_error

            show_error(f"{self.tool_name}: {type(err).__name__}: {err}")
            return None
        self._job = job
        self._ended = False  # set by returned, aborted or errored
        self._held_progress = None
        self._cancel_asked = False
        self._layer_problems = []
        self._layers_before = {_layer_key(layer) for layer in self.viewer.layers}
        worker = create_worker(job.run, _start_thread=False)
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._last_progress = 0.0
        self.run_button.text = "Cancel"
        self.progress.value = 0
        self._say("Running…")
        self._show_status()
        worker.start()
        return worker

    def cancel(self):
        if self.worker is not None and self.run_button.enabled:  # disabled: results being shown
            self._cancel_asked = True
            self._say("Cancelling…")
            self.worker.quit()

    def _abandon(self, *_):
        """The dock was closed and Qt deleted its widgets: stop the run and every later screen
        update of it (each raised 'wrapped C/C++ object … has been deleted', and the results of
        a tool no longer there still arrived as layers)."""
        try:
            self._ui_timer.stop()
        except RuntimeError:  # Qt has deleted it already (the app is closing)
            pass
        self._ui_queue.clear()
        self._finish_pending = False
        worker, self.worker = self.worker, None
        if worker is None:
            return
        for signal, slot in (
            (worker.yielded, self._on_yield),
            (worker.returned, self._on_returned),
            (worker.errored, self._on_error),
            (worker.aborted, self._on_aborted),
            (worker.finished, self._on_finished),
        ):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):  # not connected (a subclass's own worker)
                pass
        worker.quit()

    def device_label(self) -> str:
        return describe_device(self.device_choice.value)

    def upsert(self, name: str, kind: str, data, **kwargs):
        """:func:`upsert_layer` in this widget's viewer; a property napari refuses is named on
        the status line (at the end of a run, after the result's own sentence)."""
        return upsert_layer(self.viewer, name, kind, data, on_problem=self._layer_problem, **kwargs)

    def _layer_problem(self, sentence: str) -> None:
        from napari.utils.notifications import show_warning

        show_warning(sentence)
        if self.busy:
            self._layer_problems.append(sentence)
        else:
            self._say(f"{self.status.value} {sentence}")

    def _on_yield(self, message):
        """The one dispatcher of a job's messages (typed; a core's tuple is typed here)."""
        message = as_message(message)
        if isinstance(message, Partial):
            self.show_partial(message.value)
            if message.progress is not None:
                p = message.progress
                self._show_progress(p.done, p.total, p.text, force=True)
        elif isinstance(message, Loss):
            self.show_loss(message)
            self._show_progress(message.step, message.total, message.text)
        elif message.total > 0:
            self._show_progress(message.done, message.total, message.text)
        elif message.text and not getattr(self, "_cancel_asked", False):
            self._say(message.text)

    def _show_progress(self, done, total, text: str = "", force: bool = False) -> bool:
        """Update the bar and status; held back (False) when the last update was under
        PROGRESS_INTERVAL_S ago, unless it is the last step or ``force``: the latest held
        message is shown when the interval ends."""
        now = time.perf_counter()
        last = int(done) >= int(total)
        wait = PROGRESS_INTERVAL_S - (now - self._last_progress)
        if not (force or last) and wait > 0:
            self._held_progress = (done, total, text)
            if not self._progress_timer.isActive():
                self._progress_timer.start(int(wait * 1000) + 1)
            return False
        self._held_progress = None
        self._last_progress = now
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)
        if text and not getattr(self, "_cancel_asked", False):  # "Cancelling…" stays in view
            self._say(text)
        return True

    def _show_held_progress(self) -> None:
        """Show the last throttled message, unless the run has ended since."""
        held, self._held_progress = self._held_progress, None
        if held is not None and not getattr(self, "_ended", True):
            done, total, text = held
            self._show_progress(done, total, text, force=True)

    def later(self, *calls: Callable[[], Any]) -> None:
        """Queue GUI updates to run in later event-loop turns: adding a napari layer costs
        0.1-0.3 s, so several in one go would freeze the window; updates that are quick share a
        turn (up to UI_TURN_S). The run stays busy until the queue is done."""
        self._ui_queue.extend(calls)
        if not self._ui_timer.isActive():
            self._ui_timer.start()

    def _next_ui(self):
        start = time.perf_counter()
        # quick updates share a turn: each turn ends in a canvas redraw (0.1-0.2 s on a slow GL)
        while self._ui_queue and time.perf_counter() - start < UI_TURN_S:
            call = self._ui_queue.pop(0)
            try:
                call()
            except Exception as err:  # noqa: BLE001 - say it; the rest of the queue still runs
                self._say(f"Could not show the result: {type(err).__name__}: {err}")
        if not self._ui_queue:
            self._ui_timer.stop()
            if self._finish_pending:
                self._finish()

    def _on_returned(self, result):
        self._ended = True
        if isinstance(result, Refused):  # no layer is written
            self._cannot_run(ValueError(result.reason))
            return
        if getattr(self, "_cancel_asked", False):  # Cancel came before the result: honour it
            self.later(self._after_abort)
            return
        # writing has begun: a Cancel now could not be honoured, so the button does not offer it
        self.run_button.enabled = False
        self.run_button.text = "Showing results…"
        if self._job is not None:
            self._job.on_result(result)
        self.later(lambda: self._after_result(result))

    def cancelled_message(self) -> str:
        """The status line after Cancel (a tool that keeps partial results says what it kept)."""
        return "Cancelled: no layers were changed."

    def _on_aborted(self):
        self._ended = True
        self.later(self._after_abort)  # after any partial result still queued for the screen

    def _after_abort(self):
        self.progress.value = 0
        show_scale_bar(self.viewer, list(self.viewer.layers))  # for kept partial results
        self._say(self.cancelled_message())

    def _after_result(self, result):
        show_scale_bar(self.viewer, list(self.viewer.layers))
        device = getattr(result, "device", None)
        if device:
            self.ran_on.value = str(device)
        self.progress.value = self.progress.max  # finished: the bar says so
        if self.status.value in ("Running…", "Cancelling…"):
            self._say("Done.")
        if self._layer_problems:
            self._say(" ".join([self.status.value, *self._layer_problems]))
            self._layer_problems = []
        added = [lyr for lyr in self.viewer.layers if _layer_key(lyr) not in self._layers_before]
        if added:  # a later run updates its layers in place: the user's zoom is kept
            # the input too: a result drawn on it (a line scan's track) is read against it all
            inputs = list(self._job.inputs.values()) if self._job is not None else []
            # once each: DKL on a lone spectrum image has it as structure and source, and a
            # LayerList napari builds from a list with a layer twice raises "already present"
            unique = {_layer_key(i): i for i in [*added, *inputs] if i in self.viewer.layers}
            shown = list(unique.values())
            fit_view_to(self.viewer, shown)
            self._refit_on_resize(shown)
        clear_colour_bar(self.viewer)

    def _refit_on_resize(self, layers: list) -> None:
        """For STATUS_FOLLOW_S after a first run, refit the view when the canvas changes size:
        a result dock added after the fit (the defect table, at the bottom) cut the image's top
        and bottom off."""
        from qtpy.QtCore import QTimer

        canvas = getattr(self.viewer, "canvas", None)
        events = getattr(canvas, "events", None)
        if canvas is None or events is None or not hasattr(events, "size"):  # napari < 0.9
            return
        last = [tuple(canvas.size)]

        def refit():
            live = [layer for layer in layers if layer in self.viewer.layers]
            if live and fit_view_to(self.viewer, live):
                clear_colour_bar(self.viewer)

        def on_size(*_):
            size, (before,) = tuple(canvas.size), last
            last[0] = size
            # only a shrink (a dock arrived); a first show or a screenshot grows it
            if any(n < b for n, b in zip(size, before, strict=False)):
                QTimer.singleShot(0, refit)  # once the new size is settled

        def stop():
            try:
                events.size.disconnect(on_size)
            except (RuntimeError, ValueError):  # already gone with the viewer
                pass

        events.size.connect(on_size)
        QTimer.singleShot(int(STATUS_FOLLOW_S * 1000), stop)

    def _cannot_run(self, err: Exception) -> None:
        from napari.utils.notifications import show_warning

        self._say(f"Cannot run: {err}")
        self.progress.value = 0  # a refusal found in the worker left the bar full beside it
        self._show_status()
        show_warning(str(err))

    def _show_status(self) -> None:
        """Scroll a squeezed dock so its status line is on screen (the button just above),
        once the new text is laid out."""
        self._follow_status_until = time.perf_counter() + STATUS_FOLLOW_S
        self._status_timer.start()

    def _status_resized(self) -> None:
        if time.perf_counter() < self._follow_status_until:  # a result dock or wrap came late
            self._status_timer.start()

    def _scroll_to_status(self) -> None:
        self.native.ensureWidgetVisible(self.run_button.native, 0, 0)
        self.native.ensureWidgetVisible(self.status.native, 0, 4)
        self.native.horizontalScrollBar().setValue(0)  # only up/down: labels stay readable

    def _on_error(self, err):
        self._ended = True
        self.progress.value = 0  # a full bar beside "Failed" reads as success
        self._say(f"Failed: {err or type(err).__name__}")

    def _on_finished(self):
        if not getattr(self, "_ended", True):
            # Cancel after the job's last step: superqt emits neither returned nor aborted, and
            # the status kept the last progress line ("atom counting: done")
            self._ended = True
            self.later(self._after_abort)
        if self._ui_queue:  # busy until the queued layer updates are on screen
            self._finish_pending = True
        else:
            self._finish()

    def _finish(self):
        self._finish_pending = False
        self.worker = None
        self.run_button.text = "Run"
        self.run_button.enabled = True
        self._show_status()

    def _say(self, text: str):
        self.status.value = text

    @staticmethod
    def provenance_metadata(record: dict) -> dict:
        return {KEY: record}


def follow_opened_images(tool: ToolWidget, ready, *, frames: bool = True) -> None:
    """Start ``tool``'s Image on the selected image layer (the file opened last; the picker's
    default was the first layer) or the newest it can analyse, then make each image *File →
    Open* or *Open Sample* adds its Image and say ``ready(layer)`` on its status line: Run
    re-ran the image before it while the new file lay on top, hiding the result. Not followed:
    tools' own layers (no file path), spectrum images, sparse scans, and stacks of frames
    unless ``frames``."""
    import napari

    from napari_microml.runtime.validate import check_image_layer

    layers = tool.viewer.layers

    def usable(layer) -> bool:  # a grey image, not a spectrum image or sparse scan for others
        try:
            check_image_layer(layer, tool=tool.tool_name)
        except ValueError:
            return False
        record = (getattr(layer, "metadata", None) or {}).get("napari_microml") or {}
        if record.get("sparse_scan"):
            return False  # the Partial-scan completer's input
        return isinstance(layer, napari.layers.Image) and (frames or layer.ndim == 2)

    # the selected layer, else the newest one the tool can analyse
    for layer in (layers.selection.active, *reversed(list(layers))):
        if usable(layer):
            pick(getattr(tool, "image_layer"), layer)  # noqa: B009 - every image tool has one
            break

    def on_inserted(event):
        layer = opened_from_file(event)
        if not usable(layer):
            return
        if pick(getattr(tool, "image_layer"), layer):  # noqa: B009 - every image tool has one
            sentence = ready(layer)
            if not tool.busy:  # a run's own sentence comes when it ends
                tool.status.value = sentence

    layers.events.inserted.connect(on_inserted)
    # the dock closed: its pickers are gone
    tool.native.destroyed.connect(lambda *_: layers.events.inserted.disconnect(on_inserted))


def _layer_key(layer):
    """A layer's identity that survives napari's plugin proxies (a new wrapper per access)."""
    return getattr(layer, "unique_id", None) or id(layer)


def _on_resize(callback: Callable[[], Any]):
    """A Qt event filter that calls ``callback()`` whenever a widget it watches is resized."""
    from qtpy.QtCore import QEvent, QObject

    class ResizeWatch(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.Resize:
                callback()
            return False

    return ResizeWatch()


def _dock_scroll_area(controls, widget: Container):
    """A scroll area around ``controls`` that asks for their full height (a plain QScrollArea
    asks for ~24 lines) but can shrink to a few lines when the dock column is full."""
    from qtpy.QtCore import QEvent, QObject, QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    class DockScroll(QScrollArea):
        def __init__(self):
            super().__init__()
            self._magic_widget = widget  # napari's dock finds the magicgui widget here
            self._parent_watch = ParentWatch(self)
            self.installEventFilter(self._parent_watch)

        def _bar(self) -> int:
            """Room for the vertical scroll bar and the margin napari's style puts by it."""
            bar = self.verticalScrollBar()
            return 4 + (16 if bar is None else max(bar.sizeHint().width(), 12))

        def sizeHint(self):  # noqa: N802 - Qt's name
            hint = controls.sizeHint()
            return QSize(hint.width() + self._bar(), hint.height())

        def minimumSizeHint(self):  # noqa: N802 - Qt's name
            hint = controls.minimumSizeHint()
            return QSize(hint.width() + self._bar(), min(hint.height(), MIN_DOCK_HEIGHT))

    class ParentWatch(QObject):
        """magicgui learns the viewer (for the layer pickers) from the controls' parent
        changes; napari reparents the scroll area, so they are passed on from here."""

        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.ParentChange:
                widget.native_parent_changed.emit(obj.parent())
                if obj.parent() is None and getattr(widget, "busy", False):
                    widget.cancel()  # the dock was closed (its x): the run is not wanted
            return False

    scroll = DockScroll()
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    controls.layout().addStretch(1)  # the controls stay at the top of a tall dock
    scroll.setWidget(controls)
    return scroll


def as_points(positions: np.ndarray, frames: np.ndarray | None) -> np.ndarray:
    """(N, 2) positions → napari Points data; with frames, (N, 3) (frame, row, col)."""
    positions = np.asarray(positions, float).reshape(-1, 2)
    if frames is None:
        return positions
    return np.column_stack([np.asarray(frames, float), positions])


# --- a pixel size the user gives an uncalibrated image ---------------------------------------
PIXEL_SIZE_UNITS: dict[str, float | None] = {
    "nm": 1.0,
    "pm": 1e-3,
    "Å": 0.1,
    "nm field": None,  # the image's width (its field of view); divided by its pixels
}
"""The unit choices of the pixel-size row (per pixel): nm per unit, or ``None`` for the width
of the field of view in nm."""
SET_KEY = "pixel_size_set"  # metadata[KEY][SET_KEY]: what the user set and the geometry before
PLAUSIBLE_NM = (1e-4, 1e5)  # 0.1 pm to 100 µm per pixel: outside it the unit was surely wrong
_PIXEL_SIZE_ROWS: list = []  # every open row: a pixel size set in one dock shows in all


def image_width_px(layer) -> int:
    """The width (x, the last in-plane axis) of image ``layer`` in pixels."""
    shape = np.shape(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
    return int(shape[-2] if getattr(layer, "rgb", False) else shape[-1])


def file_unlabelled_scale(layer) -> float | None:
    """The per-pixel number the file gave without a unit (the reader's ``unlabelled_scale``,
    x axis), or ``None``."""
    record = ((getattr(layer, "metadata", None) or {}).get(KEY)) or {}
    said = record.get("unlabelled_scale") or {}
    values = [float(v) for v in said.values() if np.isfinite(float(v)) and float(v) > 0]
    return values[-1] if values else None


def needs_pixel_size(layer) -> bool:
    """Whether ``layer`` is an image with no length calibration in its plane (its last two
    axes in pixels: not an energy axis, not set in nm)."""
    if layer is None or pixel_size_nm(layer) is not None:
        return False
    units = getattr(layer, "units", None)
    if units is None or len(units) < 2:
        return True
    return all(str(u) in ("pixel", "px", "") for u in units[-2:])


def pixel_size_from_text(text: str, *, unit: str, width_px: int) -> float:
    """nm per pixel from what the user typed in the pixel-size row.

    Parameters
    ----------
    text : str
        A positive number ("9.33"), or a length with its unit ("9.33 pm"), which then wins over
        ``unit``.
    unit : str
        One of :data:`PIXEL_SIZE_UNITS`: the unit of a plain number, or a field of view.
    width_px : int
        The image's width in pixels (a field of view is divided by it).

    Returns
    -------
    float
        The pixel size in nm.

    Raises
    ------
    ValueError
        Nothing typed, not a positive number or length, or a size outside 0.1 pm–100 µm.
    """
    text = str(text).strip().replace(",", ".")
    if not text:
        raise ValueError("Type the pixel size (a number) first.")
    per_unit = PIXEL_SIZE_UNITS[unit]
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None:  # "9.33 pm": a length with its unit
        from napari_microml.runtime.units import nm_per_pixel

        number, _, said = text.partition(" ")
        try:
            value = float(number)
        except ValueError:
            value = None
        nm = None if value is None else nm_per_pixel(scale=[value], units=[said.strip()])
        if nm is None:
            raise ValueError(
                f"{text!r} is not a pixel size: type a number (e.g. 0.0125) and pick its unit."
            )
        value, per_unit = nm, (1.0 if per_unit is not None else None)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"The pixel size must be a positive number, not {text!r}.")
    nm = value * per_unit if per_unit is not None else value / max(int(width_px), 1)
    low, high = PLAUSIBLE_NM
    if not low <= nm <= high:
        raise ValueError(
            f"{nm:.3g} nm per pixel would make the image {nm * width_px:.3g} nm wide; a pixel "
            f"size lies between {low * 1000:g} pm and {high / 1000:g} µm: check the unit."
        )
    return nm


def _plane(layer) -> tuple:
    """``layer``'s in-plane geometry: the last two axes' scale and units (pixel or nm)."""
    units = getattr(layer, "units", None) or ()
    return (
        tuple(np.round(np.asarray(layer.scale[-2:], float), 12)),
        tuple(str(u) for u in tuple(units)[-2:]),
    )


def _made_from(viewer, image) -> list:
    """The layers that lie on ``image``'s pixels and should move with it when its pixel size
    changes: the tools' results made from it (in its units; a strain map's grid may be coarser),
    and, when it is the only image in its geometry, the layers drawn on it (a line, a reference
    region, points added by hand)."""
    return _on_image(viewer, image)[0]


def _on_image(viewer, image) -> tuple[list, list]:
    """(:func:`_made_from`, the layers drawn in ``image``'s geometry left where they are because
    another image shares it: which one they were drawn on is not known)."""
    import napari

    plane = _plane(image)
    images = [
        layer
        for layer in viewer.layers
        if isinstance(layer, napari.layers.Image) and _plane(layer) == plane
    ]
    alone = len(images) == 1
    moved, left = [], []
    for layer in viewer.layers:
        if layer.name == image.name or layer.ndim < 2 or _plane(layer)[1] != plane[1]:
            continue
        record = (getattr(layer, "metadata", None) or {}).get(KEY) or {}
        drawn = (
            not record
            and not isinstance(layer, napari.layers.Image)
            and getattr(getattr(layer, "source", None), "path", None) is None
            and _plane(layer) == plane
        )
        if record.get("input_layer") == image.name or (drawn and alone):
            moved.append(layer)
        elif drawn:
            left.append(layer)
    return moved, left


def _rescale_plane(layer, factor: float, units: tuple) -> None:
    """Multiply ``layer``'s last two axes' scale and translate by ``factor`` (its pixel origin
    kept) and give them ``units``."""
    scale, translate = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
    scale[-2:] *= factor
    translate[-2:] *= factor
    all_units = [str(u) for u in (getattr(layer, "units", None) or ["pixel"] * layer.ndim)]
    all_units[-2:] = units
    layer.scale = tuple(scale)
    layer.translate = tuple(translate)
    layer.units = tuple(all_units)


def set_pixel_size(viewer, layer, *, nm_per_pixel: float, said: str = "") -> list:
    """Calibrate uncalibrated image ``layer`` as the reader calibrates a file: its in-plane
    scale becomes ``nm_per_pixel`` in nm (its pixel origin kept); nothing else of it changes.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer holding ``layer``.
    layer : napari.layers.Image
        An image with no length calibration (:func:`needs_pixel_size`).
    nm_per_pixel : float
        The pixel size in nm.
    said : str
        What the user typed, kept in the metadata (``metadata['napari_microml']
        ['pixel_size_set']``, with the geometry before, which :func:`clear_pixel_size` restores).

    Returns
    -------
    list
        The other layers moved with it (:func:`_made_from`: results made from it, layers drawn
        on it), so they stay on its pixels.
    """
    if not needs_pixel_size(layer):
        raise ValueError(f"{layer.name!r} has a pixel size already ({pixel_size_nm(layer)} nm).")
    moved = _made_from(viewer, layer)
    old_scale = float(layer.scale[-1])
    before = {"scale": old_scale, "units": list(_plane(layer)[1])}
    for item in [layer, *moved]:
        _rescale_plane(item, nm_per_pixel / old_scale, ("nm", "nm"))
    layer.metadata.setdefault(KEY, {})[SET_KEY] = {
        "nm_per_pixel": float(nm_per_pixel),
        "said": said,
        "before": before,
        "moved": [item.name for item in moved],
    }
    _after_pixel_size(viewer, [layer, *moved])
    return moved


def clear_pixel_size(viewer, layer) -> list:
    """Undo :func:`set_pixel_size`: ``layer`` (and the layers that lie on it) back in pixels.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer holding ``layer``.
    layer : napari.layers.Image
        An image whose pixel size was set in a dock.

    Returns
    -------
    list
        The other layers moved back with it.
    """
    record = ((getattr(layer, "metadata", None) or {}).get(KEY) or {}).get(SET_KEY)
    if not record:
        raise ValueError(f"No pixel size was set on {layer.name!r} here; it came with its file.")
    moved = _made_from(viewer, layer)
    before = record["before"]
    factor = float(before["scale"]) / float(layer.scale[-1])
    for item in [layer, *moved]:
        _rescale_plane(item, factor, tuple(before["units"]))
    layer.metadata[KEY].pop(SET_KEY, None)
    _after_pixel_size(viewer, [layer, *moved])
    return moved


def _after_pixel_size(viewer, layers: list) -> None:
    """Frame the rescaled layers, show or hide the scale bar, and update every open row."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = getattr(overlays, "scale_bar", None) or getattr(viewer, "scale_bar", None)
    if any(pixel_size_nm(layer) for layer in viewer.layers):
        show_scale_bar(viewer, layers)
    elif bar is not None:
        bar.visible = False  # a bar in pixels says nothing
    if viewer.dims.ndisplay == 2 and canvas_view(viewer) is not None:
        _fit_2d(viewer, layers)
    else:
        viewer.reset_view()
    for row in list(_PIXEL_SIZE_ROWS):
        try:
            row.refresh()
        except RuntimeError:  # its dock was closed and Qt deleted it
            _PIXEL_SIZE_ROWS.remove(row)


def _short(nm: float) -> str:
    """A length in nm for a sentence: '4.78 nm', '9.33 pm', '1.2 µm'."""
    if nm < 0.1:
        return f"{nm * 1000:.3g} pm"
    if nm >= 1000:
        return f"{nm / 1000:.3g} µm"
    return f"{nm:.3g} nm"


class PixelSizeRow(Container):
    """The "Pixel size" row of an image tool's dock: shown only when the picked image has no
    length calibration (a number, its unit, Set) or had its pixel size set here (Clear)."""

    def __init__(self, tool: ToolWidget):
        from magicgui.widgets import LineEdit

        self.tool = tool
        self._typed_for: str | None = None  # the image the typed number is for
        self.note = Label(label=" ", value="")  # its own dock row: a nested one did not wrap
        self.value = LineEdit(value="")
        self.value.native.setPlaceholderText("e.g. 0.0125")
        self.unit = ComboBox(choices=list(PIXEL_SIZE_UNITS), value="nm")
        self.unit.tooltip = (
            "nm, pm, Å: the size of one pixel; nm field: the width of the whole image (its "
            "field of view) in nm"
        )
        self.button = PushButton(text="Set")
        super().__init__(
            widgets=[self.value, self.unit, self.button],
            layout="horizontal",
            labels=False,
            label="Pixel size",
        )
        self.margins = (0, 0, 0, 0)
        # within the status line's 220 px: at their own hints the row widened each dock ~190 px
        for widget, width in ((self.value, 68), (self.unit, 80), (self.button, 52)):
            widget.native.setFixedWidth(width)
        self.note.native.setWordWrap(True)
        self.note.native.setMinimumWidth(220)
        self.tooltip = (
            "The image has no length calibration: its results are in px. Give its pixel size "
            "(or its field of view) to have it, and every tool's results, in nm"
        )
        self.button.changed.connect(self._on_button)
        self.value.native.returnPressed.connect(self._on_button)
        self.value.changed.connect(self._say_field)
        self.unit.changed.connect(self._say_field)
        tool.image_layer.changed.connect(self.refresh)
        _PIXEL_SIZE_ROWS.append(self)
        tool.native.destroyed.connect(self._forget)

    def _forget(self, *_) -> None:
        if self in _PIXEL_SIZE_ROWS:
            _PIXEL_SIZE_ROWS.remove(self)

    def _record(self, layer) -> dict | None:
        return ((getattr(layer, "metadata", None) or {}).get(KEY) or {}).get(SET_KEY)

    def refresh(self, *_) -> None:
        """Show the row for the picked image: hidden when it is calibrated by its file."""
        layer = self.tool.image_layer.value
        record = None if layer is None else self._record(layer)
        if record is not None and pixel_size_nm(layer) is not None:
            nm = float(record["nm_per_pixel"])
            said, unit = str(record.get("said") or ""), "nm"
            for choice in sorted(PIXEL_SIZE_UNITS, key=len):  # "9.33 pm": number, unit
                if said.endswith(f" {choice}"):
                    said, unit = said.removesuffix(f" {choice}"), choice
            self.value.value, self.unit.value = said or f"{nm:g}", unit
            self._typed_for = None  # once cleared, offered afresh: the file's number, if any
            self.value.native.setCursorPosition(0)  # the number's start, in a narrow box
            self.value.enabled = self.unit.enabled = False
            self.button.text = "Clear"
            self.note.value = (
                f"Set here: {_short(nm)} per pixel, a {_short(nm * image_width_px(layer))} wide "
                "field; results in nm. Clear returns the image to pixels."
            )
            self.visible = self.note.visible = True
            return
        if not needs_pixel_size(layer):
            self.visible = self.note.visible = False
            return
        self.value.enabled = self.unit.enabled = True
        self.button.text = "Set"
        if layer.name != self._typed_for:  # another image: its file's number, or nothing
            given = file_unlabelled_scale(layer)
            self.value.value = "" if given is None else f"{given:.6g}"
            self.value.native.setCursorPosition(0)
            self._typed_for = layer.name
        self._say_field()
        self.visible = self.note.visible = True

    def _say_field(self, *_) -> None:
        """The note: no pixel size, what the file said, and the field of view the typed size
        gives in each unit (a microscopist knows the field of view of the image)."""
        layer = self.tool.image_layer.value
        if layer is None or self.button.text != "Set":
            return
        width = image_width_px(layer)
        text = "Not calibrated: results in px."
        said = file_unlabelled_scale(layer)
        if said is not None:
            fields = ", ".join(
                f"{_short(said * per * width)} in {unit}"
                for unit, per in PIXEL_SIZE_UNITS.items()
                if per is not None
            )
            text += f" The file says {said:.4g}/px with no unit: a field {fields}."
        try:
            nm = pixel_size_from_text(self.value.value, unit=self.unit.value, width_px=width)
        except ValueError:
            nm = None
        if nm is not None:
            text += f" Set makes it {_short(nm)}/px, {_short(nm * width)} wide."
        self.note.value = text

    def _on_button(self, *_) -> None:
        layer = self.tool.image_layer.value
        if layer is None:
            return
        running = [row.tool.tool_name for row in _PIXEL_SIZE_ROWS if row.tool.busy]
        if running:  # its result would be written in the new units with the old values
            self.tool.status.value = (
                f"Cannot change the pixel size while a run is going on ({running[0]}): "
                "wait for it or cancel it."
            )
            return
        if self.button.text == "Clear":
            moved = clear_pixel_size(self.tool.viewer, layer)
            self.tool.status.value = (
                f"Pixel size cleared: {layer.name!r}{_with(moved)} is in pixels again; results "
                "are in px."
            )
            return
        width = image_width_px(layer)
        try:
            nm = pixel_size_from_text(self.value.value, unit=self.unit.value, width_px=width)
        except ValueError as err:
            self.tool.status.value = f"Cannot set the pixel size: {err}"
            return
        said = self.value.value.strip()
        said = said if not _is_number(said) else f"{said} {self.unit.value}"
        left = _on_image(self.tool.viewer, layer)[1]
        moved = set_pixel_size(self.tool.viewer, layer, nm_per_pixel=nm, said=said)
        again = " (results made before keep their px values: Run again for nm)" if moved else ""
        names = ", ".join(repr(item.name) for item in left)
        kept = (
            f" Left in pixels: {names} (another image is in pixels too, so which one they were "
            "drawn on is not known)."
            if left
            else ""
        )
        self.tool.status.value = (
            f"Pixel size set: {_short(nm)} per pixel, a {_short(nm * width)} wide field; "
            f"{layer.name!r}{_with(moved)} is now in nm{again}.{kept} Clear, in the Pixel size "
            "row, undoes it."
        )


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "."))
    except ValueError:
        return False
    return True


def _with(moved: list) -> str:
    """' (with the 2 layers on it)' or ''."""
    if not moved:
        return ""
    return f" (with the {len(moved)} layer{'s' if len(moved) > 1 else ''} on it)"


def add_pixel_size_row(tool: ToolWidget) -> PixelSizeRow:
    """Put the "Pixel size" row just below ``tool``'s Image picker (``tool.image_layer``).

    Parameters
    ----------
    tool : ToolWidget
        An image tool's dock with an ``image_layer`` picker.

    Returns
    -------
    PixelSizeRow
        The row (hidden while the picked image is calibrated by its file).
    """
    row = PixelSizeRow(tool)
    index = list(tool).index(tool.image_layer) + 1
    tool.insert(index, row)
    tool.insert(index + 1, row.note)
    row.refresh()  # once in the dock: a widget shown with no parent opens its own window
    return row
