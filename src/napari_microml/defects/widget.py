"""Defect segmenter dock widget: image → Labels of defects, Points of environment classes and a
table dock (counts, density, one row per defect; click to centre, Export CSV)."""
from __future__ import annotations

from types import SimpleNamespace

import napari
import numpy as np
from magicgui.widgets import ComboBox, FloatSlider, create_widget

from napari_microml.defects.classes import CLASS_COLORS
from napari_microml.defects.environments import classify_environments
from napari_microml.defects.segment import segment_defects_iter
from napari_microml.runtime.provenance import KEY
from napari_microml.runtime.widget import (ToolWidget, physical_kwargs, pixel_size_nm, rescale_combo, resample_note,
                                          upsert_layer, viewer_camera)
from napari_microml.runtime.workers import progress

ENV_COLORS = ("#4477aa", "#ee7733", "#bbbbbb", "#ee3377", "#aa7744", "#555555", "#000080", "#ffaabb")
"""Environment class k is drawn in ENV_COLORS[k % 8] (class 0 = the most common); the hues
avoid the defect class colours (cyan, red, purple, yellow, green). Unusual columns get a thick
white border."""
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


def _rgba(hex_color: str) -> tuple:
    return (*(int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)), 1.0)


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
    why = (f"a honeycomb whose sublattices differ (×{ratio:.2f})" if choice["chosen"] == "dichalcogenide"
           else "equal sublattices" if ratio is not None else "not a two-sublattice honeycomb")
    return f" Model auto → {choice['chosen']} ({why})."


def _label_features(table):
    """Labels-layer features: one row per label value (row 0 = background)."""
    import pandas as pd

    cols = [c for c in ("class", "class_id", "frame", "area_px", "area_nm2", "confidence",
                        "nearest_atom_nm") if c in table.columns]
    feats = table[["label", *cols]].rename(columns={"label": "index"})
    background = {"index": 0, "class": "none", "class_id": 0}
    return pd.concat([pd.DataFrame([background]), feats], ignore_index=True)


def class_colormap(table):
    """A DirectLabelColormap giving every defect instance the fixed colour of its class."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: TRANSPARENT, 0: TRANSPARENT}
    colors.update({int(lab): CLASS_COLORS[cls] for lab, cls in zip(table["label"], table["class"])})
    return DirectLabelColormap(color_dict=colors)


def _to_pixels(points, image_layer) -> np.ndarray:
    """Points-layer data → (row, col) or (frame, row, col) pixels of ``image_layer``."""
    data = np.asarray(points.data, float)
    if len(data) == 0:
        raise ValueError(f"The atoms layer {points.name!r} has no points.")
    n = min(data.shape[1], image_layer.ndim)
    world = data[:, -n:] * np.asarray(points.scale[-n:]) + np.asarray(points.translate[-n:])
    px = (world - np.asarray(image_layer.translate[-n:])) / np.asarray(image_layer.scale[-n:])
    if image_layer.ndim == 2:
        return px[:, -2:]
    if px.shape[1] == 2:
        raise ValueError(f"The image is a stack but the atoms layer {points.name!r} has no frame "
                         "axis; add the points in the stack's frames.")
    px[:, 0] = np.rint(px[:, 0])
    return px


class DefectSegmenterWidget(ToolWidget):
    tool_name = "defect_segmenter"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.image_layer = create_widget(annotation=napari.layers.Image, label="Image")
        self.atoms_layer = create_widget(annotation=napari.layers.Points, label="Atoms (optional)",
                                         options={"nullable": True})
        self.atoms_layer.tooltip = ("Atom columns (e.g. the atom finder's, edited); empty = the "
                                    "segmenter's own column detection")
        self.model = ComboBox(label="Model", choices=_model_choices(),
                              tooltip="auto: the 'dichalcogenide' model for honeycombs of two unequally "
                                      "bright sublattices (MoS2, WS2, hBN), else 'default'")
        self.threshold = FloatSlider(label="Threshold", value=0.5, min=0.05, max=0.95, step=0.05)
        self.env_classes = ComboBox(label="Environment classes", value="auto",
                                    choices=["auto", *map(str, range(2, 9)), "off"],
                                    tooltip="auto: chosen by BIC; off: skip environment clustering")
        self.contrast = ComboBox(label="Columns are", choices=["bright", "dark"], value="bright",
                                 tooltip="bright: HAADF/ADF/STM; dark: ABF/BF")
        self.rescale = rescale_combo("6–30 px")
        super().__init__(viewer, [self.image_layer, self.atoms_layer, self.model, self.threshold,
                                  self.env_classes, self.contrast, self.rescale])
        self.table_dock = None
        self._dock = None
        self._labels_name = None
        self.model.changed.connect(self._on_model_changed)
        self._on_model_changed()

    def _on_model_changed(self, *_):
        from napari_microml.nets.registry import list_models

        meta = list_models("defects").get(f"defects-{self.model.value}", {}).get("meta", {})
        self.threshold.value = float(meta.get("recommended_threshold", 0.5))

    # -- run ---------------------------------------------------------------------------------
    def make_job(self):
        layer = self.image_layer.value
        if layer is None:
            raise ValueError("Pick an image layer first.")
        if layer.rgb:
            raise ValueError(f"Layer {layer.name!r} is an RGB picture; the defect segmenter "
                             "needs a grey image.")
        data = np.asarray(layer.data)
        points = self.atoms_layer.value
        atoms = _to_pixels(points, layer) if points is not None else None
        contrast, n_env = self.contrast.value, self.env_classes.value
        kwargs = dict(model=self.model.value, threshold=float(self.threshold.value), contrast=contrast,
                      rescale=self.rescale.value, device=self.device_choice.value, pixel_size=pixel_size_nm(layer), atoms=atoms,
                      input_name=layer.name)
        self._source = layer
        self._atoms_source = points.name if points is not None else None

        def job():
            res = yield from segment_defects_iter(data, **kwargs)
            env, note = None, ""
            if n_env == "off":
                note = "environment clustering is off"
            elif len(res.atoms) < 10:
                note = f"only {len(res.atoms)} atom columns, too few to cluster environments"
            else:
                yield progress(0, 1, f"classifying the environments of {len(res.atoms)} columns…")
                grey = np.asarray(data, np.float32)  # (never negate unsigned integers)
                try:
                    env = classify_environments(-grey if contrast == "dark" else grey, res.atoms,
                                                n_classes=None if n_env == "auto" else int(n_env))
                except ValueError as err:  # e.g. too few columns for the classes asked for
                    note = f"environments skipped: {err}"
            yield progress(1, 1, "writing layers…")  # a Cancel pressed above stops here
            return SimpleNamespace(defects=res, env=env, note=note, device=res.device)

        return job

    def show_result(self, run):
        layer, res, env = self._source, run.defects, run.env
        prov = dict(res.provenance)
        prov["atoms_layer"] = self._atoms_source
        if env is not None:
            prov["environments"] = env.provenance["parameters"]
        self._labels_name = f"{layer.name} defects"
        upsert_layer(self.viewer, self._labels_name, "labels", res.labels,
                     features=_label_features(res.table), colormap=class_colormap(res.table),
                     opacity=0.6, metadata=self.provenance_metadata(prov),
                     **physical_kwargs(layer, res.labels.ndim))
        env_counts = None
        if env is not None:
            env_counts = self._show_environments(layer, res, env)
        self._update_table(layer, res, env_counts, prov)
        counts = res.table["class"].value_counts()
        text = ", ".join(f"{n} {c}" for c, n in counts.items()) or "no defects"
        more = (f" ({run.note})" if run.note else
                f" {env.n_classes} environment classes, {int(env.unusual.sum())} unusual columns.")
        self._say(f"Found {text}." + more + resample_note(res.provenance["parameters"])
                  + model_note(res.provenance["parameters"]))

    def _show_environments(self, layer, res, env):
        import pandas as pd

        from napari_microml.runtime.widget import as_points

        atoms = np.asarray(res.atoms, float)
        frames = atoms[:, 0] if atoms.shape[1] == 3 else None
        data = as_points(atoms[:, -2:], frames)
        face = np.array([_rgba(ENV_COLORS[k % len(ENV_COLORS)]) for k in env.classes]).reshape(-1, 4)
        border = np.where(env.unusual[:, None], [[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.6]])
        feats = pd.DataFrame({"environment": env.classes, "probability": env.probability,
                              "unusualness": env.unusualness, "unusual": env.unusual, "edge": env.edge})
        if frames is not None:
            feats.insert(0, "frame", frames.astype(int))
        prov = dict(env.provenance, input_layer=layer.name, atoms_layer=self._atoms_source)
        upsert_layer(self.viewer, f"{layer.name} environments", "points", data, features=feats,
                     size=max(2.0, env.patch_size / 6), face_color=face, border_color=border,
                     border_width=np.where(env.unusual, 0.4, 0.1), border_width_is_relative=True,
                     metadata=self.provenance_metadata(prov), **physical_kwargs(layer, data.shape[1]))
        return pd.DataFrame({"class": range(env.n_classes),
                             "count": np.bincount(env.classes, minlength=env.n_classes),
                             "unusual": np.bincount(env.classes, weights=env.unusual,
                                                    minlength=env.n_classes).astype(int)})

    def _update_table(self, layer, res, env_counts, prov):
        from napari_microml.defects.table_dock import DefectTableDock

        title = f"{layer.name}: {len(res.table)} defects"
        if res.pixel_size:
            title += f" ({res.pixel_size:.4g} nm/px)"
        args = dict(env_counts=env_counts, title=title, provenance={KEY: prov} if prov else None,
                    image=layer.name, pixel_size=res.pixel_size)
        try:
            if self.table_dock is None:
                raise RuntimeError
            self.table_dock.set_data(res.table, res.counts(), **args)
            if self._dock is not None:
                self._dock.setVisible(True)  # hidden by the user: show the new table
        except RuntimeError:  # first run, or the user closed (and Qt deleted) the dock
            self.table_dock = DefectTableDock(on_select=self.center_on)
            self.table_dock.set_data(res.table, res.counts(), **args)
            self._dock = self.viewer.window.add_dock_widget(self.table_dock, name="Defect table",
                                                            area="right")

    def center_on(self, row) -> None:
        """Centre the view on the defect of a table ``row`` (and show its frame)."""
        name = self._labels_name
        ref = self.viewer.layers[name] if name in self.viewer.layers else self._source
        scale, translate = np.asarray(ref.scale), np.asarray(ref.translate)
        y = row["row"] * scale[-2] + translate[-2]
        x = row["col"] * scale[-1] + translate[-1]
        if "frame" in row.index and ref.ndim == 3:
            axis = self.viewer.dims.ndim - 3
            self.viewer.dims.set_point(axis, row["frame"] * scale[0] + translate[0])
        viewer_camera(self.viewer).center = (float(y), float(x))
