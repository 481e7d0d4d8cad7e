"""The seam between a dock widget and its job: typed messages, layer data read in the worker
thread (never on the GUI thread), and no private napari API anywhere in the package."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_microml.runtime.workers import Loss, Partial, Progress, as_message, progress, typed

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_microml"
PRIVATE_NAPARI_NAMES = ("_type_string", "_qt_window", "_qt_viewer", "_data_to_texture")


# --- typed messages ---------------------------------------------------------------------------
def test_core_tuples_become_typed_messages():
    assert as_message(progress(3, 7, "tile 3/7")) == Progress(3, 7, "tile 3/7")
    assert as_message(("progress", 1, 2)) == Progress(1, 2, "")
    # the shift-VAE's epoch message carries its loss
    epoch = ("progress", 4, 30, "Epoch 4/30: loss 2.5", {"loss": 2.5, "epoch": 4})
    assert as_message(epoch) == Loss(4, 30, {"loss": 2.5}, "Epoch 4/30: loss 2.5")
    # fine-tuning's evaluation message
    evaluation = ("loss", 20, 100, {"loss": 0.1, "val_f1": 0.9, "threshold": 0.4})
    assert as_message(evaluation) == Loss(20, 100, {"loss": 0.1, "val_f1": 0.9, "threshold": 0.4})
    typed_already = Partial({"step": 1}, Progress(1, 5))
    assert as_message(typed_already) is typed_already
    for junk in (("snapshot", 1, 2), "progress", (1, 2, 3), None):
        with pytest.raises(TypeError, match="not a Progress, Loss or Partial"):
            as_message(junk)


def test_typed_reyields_typed_messages_and_returns_the_result():
    def core():
        yield progress(1, 2, "half")
        yield Partial("shown early")
        return "result"

    gen = typed(core())
    assert next(gen) == Progress(1, 2, "half")
    assert next(gen) == Partial("shown early")
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == "result"


# --- no private napari API ---------------------------------------------------------------------
def _private_accesses(path: Path, root: Path = SRC) -> list[str]:
    """``<something other than self/cls/super()>._name`` in a module that imports napari."""
    tree = ast.parse(path.read_text())
    imports_napari = any(
        (
            isinstance(n, ast.Import)
            and any(a.name.split(".")[0] in ("napari", "vispy") for a in n.names)
        )
        or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in ("napari", "vispy"))
        for n in ast.walk(tree)
    )
    if not imports_napari:
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "super":
            continue
        found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_package_uses_no_private_napari_api():
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 20
    found = [hit for path in modules for hit in _private_accesses(path)]
    for path in modules:
        text = path.read_text()
        found += [f"{path.relative_to(SRC)}: {n}" for n in PRIVATE_NAPARI_NAMES if n in text]
    assert not found, "private napari attributes used:\n" + "\n".join(found)


def test_the_scan_finds_a_private_access(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import napari\n\ndef f(viewer):\n    return viewer.window._qt_window\n")
    assert _private_accesses(bad, tmp_path) == ["bad.py:4: viewer.window._qt_window"]


# --- layer data are read in the worker thread -------------------------------------------------
class RecordingArray:
    """An array-like that records which thread turned it into a numpy array: a lazily loaded
    file is read exactly there. napari draws it through ``__getitem__`` (a slice), which is not
    counted."""

    def __init__(self, array: np.ndarray):
        self._array = array
        self.readers: list[str] = []

    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    ndim = property(lambda self: self._array.ndim)
    size = property(lambda self: self._array.size)

    def __len__(self):
        return len(self._array)

    def __getitem__(self, key):
        return self._array[key]

    def __array__(self, dtype=None, copy=None):
        self.readers.append(threading.current_thread().name)
        return self._array if dtype is None else self._array.astype(dtype)


def _lattice(shape=(64, 64), seed=0):
    from napari_microml.synth.lattice import simulate_lattice

    return simulate_lattice(
        shape, scene="crystal", lattice="square", spacing=10, dose=1000, seed=seed
    )


def _add(viewer, array, name, **kwargs):
    lazy = RecordingArray(np.asarray(array))
    finite = np.asarray(array)
    limits = (float(finite.min()), float(finite.max()) or 1.0)
    viewer.add_image(lazy, name=name, contrast_limits=limits, **kwargs)
    return lazy


def _atoms(viewer, widget):
    lazy = _add(viewer, _lattice().image, "img")
    widget.image_layer.value = viewer.layers["img"]
    return [lazy], "img atoms"


def _defects(viewer, widget):
    lazy = _add(viewer, _lattice((96, 96)).image, "img")
    widget.image_layer.value = viewer.layers["img"]
    widget.env_classes.value = "off"
    return [lazy], "img defects"


def _completion(viewer, widget):
    lazy = _add(viewer, _lattice().image, "img")
    widget.image_layer.value = viewer.layers["img"]
    return [lazy], "img completed"


def _completion_measured(viewer, widget):
    from napari_microml.completion.masks import scan_mask
    from napari_microml.completion.widget import COMPLETE

    image = _lattice().image
    mask = scan_mask("spiral", image.shape, 0.1, seed=0)
    lazy_values = _add(viewer, np.where(mask, image, 0), "measured")
    lazy_mask = _add(viewer, mask.astype(np.float32), "measured mask")
    widget.mode.value = COMPLETE
    widget.sparse_layer.value = viewer.layers["measured"]
    widget.mask_layer.value = viewer.layers["measured mask"]
    return [lazy_values, lazy_mask], "measured completed"


def _lattice_tool(viewer, widget):
    scene = _lattice((96, 96))
    lazy = _add(viewer, scene.image, "img")
    points = viewer.add_points(np.asarray(scene.positions, float), name="cols")
    widget.image_layer.value = viewer.layers["img"]
    widget.points_layer.value = points
    return [lazy], "img exx"


def _spectra(viewer, widget):
    from napari_microml.synth.spectra import simulate_spectrum_image

    cube, axis, _ = simulate_spectrum_image((6, 7), n_channels=32, seed=0)
    step = float(axis[1] - axis[0])
    record = {"scale": step, "offset": float(axis[0]), "units": "eV"}
    meta = {"napari_microml": {"spectral_axis": record}}
    lazy = _add(viewer, cube, "SI", metadata=meta)
    widget.layer_choice.value = viewer.layers["SI"]
    widget.epochs.value = 2
    widget.device_choice.value = "cpu"
    return [lazy], "SI shift"


def _dkl(viewer, widget):
    from napari_microml.synth.properties import structure_property_pair

    structure, prop = structure_property_pair((16, 18), kind="domains", seed=0)
    lazy_s = _add(viewer, structure, "structure")
    lazy_p = _add(viewer, prop, "truth")
    widget.structure_layer.value = viewer.layers["structure"]
    widget.source_layer.value = viewer.layers["truth"]
    widget.source_kind.value = "scalar map"
    widget.patch_size.value = 5
    widget.n_initial.value = 3
    widget.budget.value = 6
    widget.device_choice.value = "cpu"
    return [lazy_s, lazy_p], "DKL mean"


TOOLS = {
    "Atom finder": _atoms,
    "Defect segmenter": _defects,
    "Partial-scan completer": _completion,
    "Partial-scan completer/measured": _completion_measured,
    "Lattice analysis": _lattice_tool,
    "Spectral shift-VAE": _spectra,
    "Active learning (DKL)": _dkl,
}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("tool", list(TOOLS))
def test_a_run_reads_layer_data_only_in_the_worker(make_napari_viewer, qtbot, tool):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", tool.split("/")[0])
    arrays, output = TOOLS[tool](viewer, widget)
    for lazy in arrays:
        lazy.readers.clear()  # what napari did while the layers were added does not count
    button = widget.init_button if tool == "Active learning (DKL)" else widget.run_button
    button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert output in viewer.layers, widget.status.value
    main = threading.main_thread().name
    for lazy in arrays:
        assert lazy.readers, f"{tool}: an input layer was never read"
        assert main not in lazy.readers, f"{tool} read a layer's data on the GUI thread"


def test_a_failed_property_update_is_named_on_the_status_line(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Lattice analysis")
    viewer.add_points(np.zeros((3, 2)), name="cols")
    layer = widget.upsert("cols", "points", np.ones((4, 2)), symbol="no such symbol")
    assert len(layer.data) == 4  # the data are updated either way
    status = widget.status.value
    assert "'cols'" in status and "symbol" in status and "did not take" in status
