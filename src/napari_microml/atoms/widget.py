"""Atom finder dock widget: image → Points layer of refined columns (+ probability map)."""
from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSlider, PushButton, create_widget

from napari_microml.atoms.finder import NOISY_PERIOD, find_atoms_iter, refine_points_iter
from napari_microml.atoms.finetune import unsure_note
from napari_microml.runtime.widget import (ToolWidget, as_points, physical_kwargs, pixel_size_nm, rescale_combo,
                                          resample_note, upsert_layer)


def _model_choices() -> list[str]:
    from napari_microml.nets.registry import list_models

    names = [n.removeprefix("atoms-") for n in list_models("atoms")]
    return names or ["default"]


class AtomFinderWidget(ToolWidget):
    tool_name = "atom_finder"

    def __init__(self, viewer: napari.viewer.Viewer):
        self.image_layer = create_widget(annotation=napari.layers.Image, label="Image")
        self.model = ComboBox(label="Model", choices=_model_choices())
        self.threshold = FloatSlider(label="Threshold", value=0.5, min=0.05, max=0.95, step=0.05)
        self.refine = ComboBox(label="Refinement", choices=["gaussian", "com", "none"], value="gaussian")
        self.contrast = ComboBox(label="Columns are", choices=["bright", "dark"], value="bright",
                                 tooltip="bright: HAADF/ADF/STM; dark: ABF/BF")
        self.rescale = rescale_combo(f"5–36 px (or above {NOISY_PERIOD:g} px in a noisy image)")
        self.show_probability = CheckBox(label="Add probability map", value=False)
        self.refine_button = PushButton(text="Refine points")
        self.refine_button.tooltip = "Re-fit the (edited) points of the atoms layer"
        super().__init__(viewer, [self.image_layer, self.model, self.threshold, self.refine,
                                  self.contrast, self.rescale, self.show_probability])
        self.append(self.refine_button)
        self.refine_button.changed.connect(self._on_refine_clicked)
        self.model.changed.connect(self._on_model_changed)
        self._on_model_changed()

    def _on_model_changed(self, *_):
        """Use the detection threshold recorded for the chosen model, when it has one."""
        from napari_microml.nets.registry import list_models

        meta = list_models("atoms").get(f"atoms-{self.model.value}", {}).get("meta", {})
        self.threshold.value = float(meta.get("recommended_threshold", 0.5))

    # -- run ---------------------------------------------------------------------------------
    def _selected_image(self):
        layer = self.image_layer.value
        if layer is None:
            raise ValueError("Pick an image layer first.")
        if layer.rgb:
            raise ValueError(f"Layer {layer.name!r} is an RGB picture; the atom finder needs a grey image.")
        return layer

    def make_job(self):
        layer = self._selected_image()
        data = np.asarray(layer.data)
        kwargs = dict(model=self.model.value, threshold=float(self.threshold.value),
                      refine=self.refine.value, contrast=self.contrast.value, rescale=self.rescale.value,
                      device=self.device_choice.value, pixel_size=pixel_size_nm(layer),
                      input_name=layer.name)
        self._source = layer

        def job():
            return (yield from find_atoms_iter(data, **kwargs))

        return job

    def points_name(self, layer=None) -> str:
        return f"{(layer or self._source).name} atoms"

    def show_result(self, result):
        layer = self._source
        data = as_points(result.positions, result.frames)
        sigma = np.nanmedian(result.features["sigma"]) if len(result.features) else np.nan
        size = float(np.clip(2.5 * sigma, 3, 30)) if np.isfinite(sigma) else 5.0
        upsert_layer(
            self.viewer, self.points_name(layer), "points", data,
            features=result.features.reset_index(drop=True), size=size,
            face_color="transparent", border_color="#ff3b30", border_width=0.15,
            metadata=self.provenance_metadata(result.provenance),
            **physical_kwargs(layer, data.shape[1]),
        )
        if self.show_probability.value:
            upsert_layer(self.viewer, f"{layer.name} atom probability", "image", result.probability,
                         colormap="magma", opacity=0.5, blending="additive",
                         contrast_limits=(0, 1), metadata=self.provenance_metadata(result.provenance),
                         **physical_kwargs(layer, result.probability.ndim))
        self._say(f"Found {len(result.positions)} columns." + resample_note(result.parameters)
                  + unsure_note(result.features))

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
            self._say(f"No layer {name!r} to refine: run the finder or add a Points layer with that name.")
            return
        points = self.viewer.layers[name]
        pts = np.asarray(points.data, float)
        frames = pts[:, 0].round().astype(int) if pts.shape[1] == 3 else None
        data = np.asarray(layer.data)
        method, contrast = self.refine.value, self.contrast.value

        def job():
            return (yield from refine_points_iter(data, pts[:, -2:], frames=frames, refine=method,
                                                  contrast=contrast))

        def apply(result):
            pos, feats = result
            old = points.features.reset_index(drop=True)
            for col in feats.columns:
                old[col] = feats[col].to_numpy()
            points.data = as_points(pos, frames)
            points.features = old
            points.metadata.setdefault("napari_microml", {})["refined_points"] = {
                "refine": method, "n_points": int(len(pos))}
            self._say(f"Refined {len(pos)} points.")

        self.start(job, on_result=apply)
