"""Journeys from the session-19 audit (helper G): files as other instruments and vendors write
them, opened with our reader, the Partial-scan completer, DKL and Shift-VAE docks opened as the
Plugins menu opens them, and the ``microml`` CLI in a subprocess. Each test fails on the code
before its fix."""

from __future__ import annotations

import numpy as np
import pytest
from journey import open_file
from vendor_files import write_hspy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_micrometre_image_overlays_a_nanometre_one_beside_an_uncalibrated_one(
    make_napari_viewer, tmp_path
):
    """The same 40×30 field saved in µm (as an SEM or a DM survey writes it) and in nm, opened
    with an uncalibrated image (pixels) in the viewer: napari converts units between layers only
    while every layer has a unit of the same kind; one pixel layer and it warns "Inconsistent
    units across layers", the scale bar loses its unit and the µm field sat 1000× smaller in a
    corner of the nm one. Every length now opens in nm, so calibrated files overlay whatever
    else is open; the file's unit, scale and offset stay in the metadata."""
    import tifffile

    image = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "uncalibrated.tif", image)
    write_hspy(tmp_path / "survey_um.hspy", image, [(a, 0.002, 0.1, "µm", False) for a in "yx"])
    write_hspy(tmp_path / "stem_nm.hspy", image, [(a, 2.0, 100.0, "nm", False) for a in "yx"])
    viewer = make_napari_viewer()
    (px,) = open_file(viewer, tmp_path / "uncalibrated.tif")
    (um,) = open_file(viewer, tmp_path / "survey_um.hspy")
    (nm,) = open_file(viewer, tmp_path / "stem_nm.hspy")
    assert viewer.layers.extent.units is None  # napari's "Inconsistent units": raw numbers
    assert [str(u) for u in um.units] == ["nanometer", "nanometer"]
    np.testing.assert_allclose(um.extent.world, nm.extent.world)
    said = um.metadata["napari_microml"]["file_units"]
    assert said == {"y": ["µm", 0.002, 0.1], "x": ["µm", 0.002, 0.1]}
    assert "file_units" not in nm.metadata["napari_microml"]  # nm as the file said
