"""Defect segmenter dock widget: image → Labels of defects, Points of environment classes and a
table dock (counts, density, one row per defect; click to centre, Export CSV)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, FloatSlider

from napari_microml.atoms.widget import (
    CONTRAST_TIP,
    points_to_pixels,
    small_field,
)
from napari_microml.defects.classes import CLASS_COLORS
from napari_microml.defects.environments import classify_environments_iter
from napari_microml.defects.segment import segment_defects_iter
from napari_microml.runtime.contrast import CONTRASTS, ContrastChoice
from napari_microml.runtime.provenance import KEY
from napari_microml.runtime.threads import start_numba_threads
from napari_microml.runtime.units import too_coarse
from napari_microml.runtime.validate import check_image_layer
from napari_microml.runtime.widget import (
    Job,
    ToolWidget,
    add_pixel_size_row,
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
from napari_microml.runtime.workers import Progress

ENV_COLORS = (
    "#4477aa",
    "#ee7733",
    "#bbbbbb",
    "#ee3377",
    "#aa7744",
    "#555555",
    "#000080",
    "#ffaabb",
)
"""Environment class k is drawn in ENV_COLORS[k % 8] (class 0 = the most common); the hues
avoid the defect class colours (cyan, red, purple, yellow, green). Unusual columns get a thick
white border."""
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
MARKER_MIN_SCREEN_PX = (
    18  # a defect's ring is never drawn smaller than this on screen (full view of 4k)
)


def _rgba(hex_color: str) -> tuple:
    return (*(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)), 1.0)


def _model_choices() -> list[str]:
    from napari_microml.nets.registry import list_models

    names = [n.removeprefix("defects-") for n in list_models("defects")]
    return ["auto", *names] if len(names) > 1 else names or ["default"]


def model_note(parameters: dict) -> str:
    """A sentence for the status line when ``model='auto'`` chose the model, else ''."""
    choice = parameters.get("model_choice")
    if not choice:
        return ""
    ratio = choice.get("sublattice_ratio")
    why = (
        f"a honeycomb whose sublattices differ (×{ratio:.2f})"
        if choice["chosen"] == "dichalcogenide"
        else "equal sublattices"
        if ratio is not None
        else "not a two-sublattice honeycomb"
    )
    return f" Model auto → {choice['chosen']} ({why})."


def _label_features(table):
    """Labels-layer features: one row per label value (row 0 = background)."""
    import pandas as pd

    cols = [
        c
        for c in (
            "class",
            "class_id",
            "frame",
            "area_px",
            "area_nm2",
            "confidence",
            "class_confidence",
            "source",
            "nearest_atom_nm",
        )
        if c in table.columns
    ]
    feats = table[["label", *cols]].rename(columns={"label": "index"})
    background = {"index": 0, "class": "none", "class_id": 0}
    return pd.concat([pd.DataFrame([background]), feats], ignore_index=True)


def class_colormap(table):
    """A DirectLabelColormap giving every defect instance the fixed colour of its class."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: TRANSPARENT, 0: TRANSPARENT}
    colors.update(
        {
            int(lab): CLASS_COLORS[cls]
            for lab, cls in zip(table["label"], table["class"], strict=True)
        }
    )
    return DirectLabelColormap(color_dict=colors)


def _warm_label_colormap(res) -> None:
    """Compile napari's label-colour kernels (numba, ~4 s the first time) here in the worker on a
    few pixels, so drawing the labels layer does not freeze the window."""
    from napari.layers import Labels

    start_numba_threads()  # started in this pooled thread it set later torch jobs' thread count
    pixels = np.ascontiguousarray(res.labels.reshape(-1)[:16])
    class_colormap(res.table).map(np.resize(pixels, 16).reshape(4, 4))
    # a new Labels layer first sizes its texture with its default colormap (49 colours, uint8
    # texture): another kernel, compiled on the GUI thread unless a layer is made here
    Labels(np.zeros((4, 4), dtype=pixels.dtype))


def _prepare_first_run() -> None:
    """What a first Run would pay for before its result shows (1-3 s on a 2-core CPU): the
    mixture models the environments need and napari's label-colour kernels (a labels result of
    a few classes, as ``segment_defects`` writes them)."""
    import pandas as pd
    import sklearn.decomposition  # noqa: F401 - imported for the environments
    import sklearn.mixture  # noqa: F401

    labels = np.arange(16, dtype=np.int32).reshape(4, 4) % 3  # int32: the kernel's type
    table = pd.DataFrame({"label": [1, 2], "class": list(CLASS_COLORS)[:2]})
    _warm_label_colormap(SimpleNamespace(labels=labels, table=table))


SAID = {
    "vacancy": ("vacancy", "vacancies"),
    "dopant_bright": ("bright dopant", "bright dopants"),
    "dopant_dim": ("dim dopant", "dim dopants"),
    "interstitial": ("interstitial", "interstitials"),
    "extended": ("extended defect", "extended defects"),
}
"""How the status line names each class (the table and the CSV keep the class ids)."""


def said(name: str, n: int) -> str:
    """'6 bright dopants', '1 vacancy': ``n`` defects of class ``name`` in words."""
    one, many = SAID.get(name, (name, name))
    return f"{n} {one if n == 1 else many}"


@dataclass
class DefectRun:
    """What the worker hands to the GUI thread: the segmentation and the environments."""

    defects: Any
    env: Any
    note: str
    device: str


class DefectSegmenterWidget(ToolWidget):
    tool_name = "defect_segmenter"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.image_layer = layer_picker(napari.layers.Image, label="Image")
        self.image_layer.tooltip = (
            "The grey image (2D or a stack of frames); its pixel size in nm "
            "comes from the layer's scale and units (areas in nm², distances in nm)"
        )
        self.atoms_layer = layer_picker(
            napari.layers.Points, label="Atoms (optional)", options={"nullable": True}
        )
        self.atoms_layer.tooltip = (
            "Atom columns for the environments, lattice spacing and checks "
            "(e.g. the atom finder's points, edited); empty = the atom "
            "finder's columns, found as part of the run"
        )
        self.model = ComboBox(
            label="Model",
            choices=_model_choices(),
            tooltip="auto: the 'dichalcogenide' model for honeycombs of two unequally "
            "bright sublattices (MoS2, WS2, hBN), else 'default'",
        )
        self.threshold = FloatSlider(
            label="Threshold",
            value=0.5,
            min=0.05,
            max=0.95,
            step=0.05,
            tooltip="Minimum defect probability (0–1, no unit) of a defect's "
            "pixels and of its confidence; weaker defects are not shown",
        )
        self.env_classes = ComboBox(
            label="Environment classes",
            value="auto",
            choices=["auto", *map(str, range(2, 9)), "off"],
            tooltip="Number of classes of atomic environments (a count); auto: "
            "chosen by BIC; off: skip environment clustering",
        )
        self.contrast = ComboBox(
            label="Columns are",
            choices=list(CONTRASTS),
            value="auto",
            tooltip=CONTRAST_TIP,
        )
        self.rescale = rescale_combo("6–30 px")
        super().__init__(
            viewer,
            [
                self.image_layer,
                self.atoms_layer,
                self.model,
                self.threshold,
                self.env_classes,
                self.contrast,
                self.rescale,
            ],
        )
        self.table_dock = None
        self._dock = None
        self._shown: tuple[str, str] | None = None  # (labels, image) names of the table's run
        self.model.changed.connect(self._on_model_changed)
        self._on_model_changed()
        self.pixel_size = add_pixel_size_row(self)
        follow_opened_images(self, self._ready_for)
        preload("torch")  # imported in the worker it held the GIL and Cancel for seconds
        # while the user picks an image and settings, not in the first Run
        self._preparing = threading.Thread(
            target=_prepare_first_run, name="defects-prepare", daemon=True
        )
        self._preparing.start()

    def _ready_for(self, layer) -> str:
        """The status for a newly opened image; its columns are found in the run (the atoms
        picked before were another image's)."""
        self.atoms_layer.value = None
        return f"Ready: Run segments the defects in {layer.name!r}."

    def _on_model_changed(self, *_):
        from napari_microml.nets.registry import list_models

        meta = list_models("defects").get(f"defects-{self.model.value}", {}).get("meta", {})
        self.threshold.value = float(meta.get("recommended_threshold", 0.5))

    # -- run ---------------------------------------------------------------------------------
    def make_job(self) -> Job:
        layer = self.image_layer.value
        check_image_layer(layer, tool="defect segmenter")
        coarse = too_coarse(pixel_size_nm(layer), f"the pixels of {layer.name!r} are")
        if coarse:  # its 'defects' would be texture: a ring over the whole image on CuZn
            raise ValueError(f"{coarse}. The defect segmenter needs an atomic-resolution image.")
        points = self.atoms_layer.value
        atoms = points_to_pixels(points, layer) if points is not None else None
        n_env = self.env_classes.value
        kwargs = dict(
            model=self.model.value,
            threshold=float(self.threshold.value),
            contrast=self.contrast.value,
            rescale=self.rescale.value,
            device=self.device_choice.value,
            pixel_size=pixel_size_nm(layer),
            atoms=atoms,
            input_name=layer.name,
        )

        preparing = self._preparing

        def work(image):
            # run after it, not beside it: its imports and compile held the GIL in turns with
            # the run and made the pair slower than the two one after the other
            while preparing.is_alive():
                yield Progress(0, 1, "preparing the first run…")
                preparing.join(0.1)
            res = yield from segment_defects_iter(image, **kwargs)
            env, note = None, ""
            if n_env == "off":
                note = "environment clustering is off"
            elif res.provenance["parameters"].get("estimated_period_px") is None:
                note = "no lattice: isolated columns have no environments to classify"
            elif len(res.atoms) < 10:
                note = f"only {len(res.atoms)} atom columns, too few to cluster environments"
            else:
                yield Progress(0, 1, f"classifying the environments of {len(res.atoms)} columns…")
                grey = np.asarray(image, np.float32)  # (never negate unsigned integers)
                dark = res.provenance["parameters"]["contrast"] == "dark"
                try:
                    env = yield from classify_environments_iter(  # Cancel lands between steps
                        -grey if dark else grey,
                        res.atoms,
                        n_classes=None if n_env == "auto" else int(n_env),
                    )
                except ValueError as err:  # e.g. too few columns for the classes asked for
                    note = f"environments skipped: {err}"
            _warm_label_colormap(res)
            yield Progress(1, 1, "writing layers…")  # a Cancel pressed above stops here
            return DefectRun(defects=res, env=env, note=note, device=res.device)

        atoms_name = points.name if points is not None else None
        return Job(work, partial(self._show_run, layer, atoms_name), inputs={"image": layer})

    def _show_run(self, layer, atoms_name: str | None, run: DefectRun) -> None:
        """Labels and markers, then the environments and the table on the next turn of the
        event loop: two short pauses of the window instead of one long one."""
        res, env = run.defects, run.env
        prov = dict(res.provenance)
        prov["atoms_layer"] = atoms_name
        if env is not None:
            prov["environments"] = env.provenance["parameters"]
        labels_name = f"{layer.name} defects"
        self.upsert(
            labels_name,
            "labels",
            res.labels,
            features=_label_features(res.table),
            colormap=class_colormap(res.table),
            opacity=0.6,
            metadata=self.provenance_metadata(prov),
            **physical_kwargs(layer, res.labels.ndim),
        )
        self._show_markers(layer, res)
        self._shown = (labels_name, layer.name)
        self.later(lambda: self._show_environments_and_table(layer, run, prov, atoms_name))

    def _show_environments_and_table(self, layer, run, prov, atoms_name):
        res, env = run.defects, run.env
        env_counts = None
        if env is not None:
            env_counts = self._show_environments(layer, res, env, atoms_name)
        self._update_table(layer, res, env_counts, prov)
        counts = res.table["class"].value_counts()
        text = ", ".join(said(c, n) for c, n in counts.items()) or "no defects"
        params = res.provenance["parameters"]
        if params.get("dropped_at_edge"):
            n_edge = int(params["dropped_at_edge"])
            text += (
                f" ({n_edge} more at the image edge not counted: the border cuts "
                f"{'its' if n_edge == 1 else 'their'} neighbourhood)"
            )
        if params.get("dropped_periodic_interstitials"):
            n_same = int(params["dropped_periodic_interstitials"])
            text += (
                f" ({n_same} interstitial call{'' if n_same == 1 else 's'} dropped: the same "
                "site is as bright in the neighbouring unit cells, so it is the structure)"
            )
        choice = params.get("contrast_choice") or {}
        contrast = ContrastChoice(
            params["contrast"], choice.get("requested", params["contrast"]), choice.get("skew")
        )
        source = "your atoms layer" if params.get("atoms") == "given" else "the atom finder"
        n_env, n_odd = (0, 0) if env is None else (env.n_classes, int(env.unusual.sum()))
        more = (
            f" ({run.note})"
            if run.note
            else f" {n_env} environment class{'' if n_env == 1 else 'es'}, "
            f"{n_odd} unusual column{'' if n_odd == 1 else 's'}."
        )
        if params.get("estimated_period_px") is None:  # single atoms, particles, amorphous
            head = "Found no defects: there is" if counts.empty else f"Found {text}, but there is"
            small = small_field(res.labels.shape, res.atoms)
            if small:  # a crop of a crystal: too few cells to see its lattice
                self._say(
                    f"{head} no lattice to be seen in {layer.name}: {small} "
                    f"({len(res.atoms)} atom columns from {source}), so no environments were "
                    "classified. Analyse a larger field of view."
                )
                return
            self._say(
                f"{head} no crystal lattice in {layer.name} ({len(res.atoms)} atom columns "
                f"from {source}, not in a periodic arrangement), so no environments were "
                "classified. The defect segmenter needs a crystalline image; for single atoms "
                "or particles use the Atom finder."
            )
            return
        self._say(
            f"Found {text}; {contrast.note()}, {len(res.atoms)} atom columns from {source}."
            + more
            + resample_note(params)
            + levelling_note(params)
            + model_note(params)
        )

    def _show_markers(self, layer, res):
        """A ring in its class colour around every defect, never smaller than
        MARKER_MIN_SCREEN_PX on screen, so defects show at full view of a large image."""
        from napari_microml.runtime.widget import as_points

        table = res.table
        frames = table["frame"].to_numpy() if "frame" in table else None
        data = as_points(table[["row", "col"]].to_numpy(float), frames)
        colors = np.array([CLASS_COLORS[c] for c in table["class"]]).reshape(-1, 4)
        atoms = np.asarray(res.atoms, float)[:, -2:]
        if len(atoms) >= 2:
            from scipy.spatial import cKDTree

            size = float(1.5 * np.median(cKDTree(atoms).query(atoms, k=2)[0][:, 1]))
        else:
            size = 2.5 * float(np.sqrt(np.median(table["area_px"]))) if len(table) else 10.0
        markers = self.upsert(
            f"{layer.name} defect markers",
            "points",
            data,
            features=table[["label", "class", "confidence"]].reset_index(drop=True),
            size=size,
            symbol="ring",
            face_color=colors if len(colors) else "transparent",
            border_width=0,
            metadata=self.provenance_metadata(res.provenance),
            **physical_kwargs(layer, data.shape[1]),
        )
        markers.canvas_size_limits = (MARKER_MIN_SCREEN_PX, 10000)
        markers.editable = False

    def _show_environments(self, layer, res, env, atoms_name):
        import pandas as pd

        from napari_microml.runtime.widget import as_points

        atoms = np.asarray(res.atoms, float)
        frames = atoms[:, 0] if atoms.shape[1] == 3 else None
        data = as_points(atoms[:, -2:], frames)
        face = np.array([_rgba(ENV_COLORS[k % len(ENV_COLORS)]) for k in env.classes]).reshape(
            -1, 4
        )
        border = np.where(env.unusual[:, None], [[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.6]])
        feats = pd.DataFrame(
            {
                "environment": env.classes,
                "probability": env.probability,
                "unusualness": env.unusualness,
                "unusual": env.unusual,
                "edge": env.edge,
            }
        )
        if frames is not None:
            feats.insert(0, "frame", frames.astype(int))
        prov = dict(env.provenance, input_layer=layer.name, atoms_layer=atoms_name)
        self.upsert(
            f"{layer.name} environments",
            "points",
            data,
            features=feats,
            size=max(2.0, env.patch_size / 6),
            face_color=face,
            border_color=border,
            border_width=np.where(env.unusual, 0.4, 0.1),
            border_width_is_relative=True,
            metadata=self.provenance_metadata(prov),
            **physical_kwargs(layer, data.shape[1]),
        )
        return pd.DataFrame(
            {
                "class": range(env.n_classes),
                "count": np.bincount(env.classes, minlength=env.n_classes),
                "unusual": np.bincount(
                    env.classes, weights=env.unusual, minlength=env.n_classes
                ).astype(int),
            }
        )

    def _update_table(self, layer, res, env_counts, prov):
        from napari_microml.defects.table_dock import DefectTableDock

        n = len(res.table)
        title = f"{layer.name}: {n} defect{'' if n == 1 else 's'}"
        if res.pixel_size:
            title += f" ({res.pixel_size:.4g} nm/px)"
        args = dict(
            env_counts=env_counts,
            title=title,
            provenance={KEY: prov} if prov else None,
            image=layer.name,
            pixel_size=res.pixel_size,
        )
        try:
            if self.table_dock is None:
                raise RuntimeError
            self.table_dock.set_data(res.table, res.counts(), **args)
            if self._dock is not None:
                self._dock.setVisible(True)  # hidden by the user: show the new table
        except RuntimeError:  # first run, or the user closed (and Qt deleted) the dock
            self.table_dock = DefectTableDock(on_select=self.center_on)
            self.table_dock.set_data(res.table, res.counts(), **args)
            self._dock = self.viewer.window.add_dock_widget(
                self.table_dock, name="Defect table", area="bottom"
            )

    def center_on(self, row) -> None:
        """Centre the view on the defect of a table ``row`` (and show its frame)."""
        names = [n for n in self._shown or () if n in self.viewer.layers]
        if not names:
            return
        ref = self.viewer.layers[names[0]]
        scale, translate = np.asarray(ref.scale), np.asarray(ref.translate)
        y = row["row"] * scale[-2] + translate[-2]
        x = row["col"] * scale[-1] + translate[-1]
        if "frame" in row.index and ref.ndim == 3:
            axis = self.viewer.dims.ndim - 3
            self.viewer.dims.set_point(axis, row["frame"] * scale[0] + translate[0])
        viewer_camera(self.viewer).center = (float(y), float(x))
