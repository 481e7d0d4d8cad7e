"""The reader leaves no file handle open behind it (rsciio's MRC reader kept its header one)."""

from __future__ import annotations

import gc
import warnings

import numpy as np


def test_mrc_reader_closes_its_file(shared_data):
    from napari_microml.io.reader import read_file

    path = shared_data / "formats" / "ROI_Random_Scan_movie.mrc"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        layers = read_file(path)
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]
    movie = np.asarray(layers[0][0])
    assert movie.shape == (348, 16, 16) and np.isfinite(movie).all() and movie.std() > 0
    import importlib

    assert "open" not in vars(importlib.import_module("rsciio.mrc._api"))  # stand-in removed
