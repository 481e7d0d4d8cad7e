"""A dock whose run needs torch imports it when it opens (or when a network is chosen), not in
its worker: an import there holds the GIL, so the first Cancel and progress came late.

Each case runs in a fresh Python: inside this test process torch is usually imported already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import napari
viewer = napari.Viewer(show=False)
before = "torch" in sys.modules
_, widget = viewer.window.add_plugin_dock_widget("napari-microml", DOCK)
opened = "torch" in sys.modules
chosen = None
if CHOOSE is not None:
    widget.model.value = CHOOSE
    chosen = "torch" in sys.modules
viewer.close()
print("RESULT " + json.dumps({"before": before, "opened": opened, "chosen": chosen}))
"""


def _run(dock: str, choose: str | None) -> dict:
    code = f"DOCK = {dock!r}\nCHOOSE = {choose!r}\n" + SCRIPT
    env = {**os.environ, "QT_API": os.environ.get("QT_API", "pyqt6")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    if result["before"]:
        pytest.skip("napari itself imported torch here; the dock's import cannot be seen")
    return result


@pytest.mark.skipif(
    not (os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM")), reason="no display"
)
@pytest.mark.parametrize("dock", ["Atom finder", "Defect segmenter"])
def test_network_dock_imports_torch_when_it_opens(dock):
    assert _run(dock, None)["opened"] is True


@pytest.mark.skipif(
    not (os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM")), reason="no display"
)
def test_completer_imports_torch_only_when_a_network_is_chosen():
    from napari_microml.nets.registry import list_models

    nets = sorted(n.removeprefix("completion-") for n in list_models("completion"))
    if not nets:
        pytest.skip("no completion network shipped")
    result = _run("Partial-scan completer", nets[0])
    assert result["opened"] is False  # kriging, the default, needs no torch
    assert result["chosen"] is True
