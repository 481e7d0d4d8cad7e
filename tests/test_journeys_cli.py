"""User journeys for the ``microml`` command line (issues #26, #27).

Each journey runs the installed console script (``.venv/bin/microml``) in a subprocess, as a
user types it, on real files from ../shared/data with the default settings unless the journey
is about a setting, and checks the files it writes against a reference computed here from the
data (not from the package): the lattice from the image's autocorrelation, hand-labelled atom
positions, the zero-loss-peak centroid, the movie's frame sums.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.realdata

MICROML = Path(sys.executable).with_name("microml")


def microml(*args, cwd=None) -> subprocess.CompletedProcess:
    if not MICROML.exists():
        pytest.skip(f"the console script {MICROML} is not installed (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(
        [str(MICROML), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


def _lattice_vectors(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two shortest non-collinear lattice vectors (px) from the image's autocorrelation."""
    from scipy import ndimage

    img = np.asarray(image, float)
    img = img - img.mean()
    ac = np.fft.fftshift(np.fft.irfft2(np.abs(np.fft.rfft2(img)) ** 2, s=img.shape))
    cy, cx, r = img.shape[0] // 2, img.shape[1] // 2, 80
    win = ac[cy - r : cy + r + 1, cx - r : cx + r + 1]
    peaks = np.argwhere(win == ndimage.maximum_filter(win, 9)) - r
    peaks = peaks[np.hypot(*peaks.T) > 5]
    peaks = peaks[np.argsort(np.hypot(*peaks.T))]
    a = peaks[0].astype(float)
    b = next(
        p
        for p in peaks[1:].astype(float)
        if abs(a[0] * p[1] - a[1] * p[0]) > 0.3 * np.linalg.norm(a) * np.linalg.norm(p)
    )
    return a, b


def _nn_distances(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(points).query(points, 2)[0][:, 1]


def test_atoms_acquisition_18_then_rerun_into_the_same_folder(shared_data, tmp_path):
    """HAADF (Velox .emd, 1024², 12.25 pm/px). Reference: one column per unit cell of the lattice
    measured from the autocorrelation (columns at the border are cut: ≥ 90 %); nearest-neighbour
    spacing = the shortest lattice vector. Then the user reruns into the same folder: refused
    (exit 2, files named, nothing touched) until --overwrite (the rerun once overwrote silently).
    """
    from napari_microml.io.reader import read_file

    emd = _need(shared_data / "formats" / "Acquisition_18.emd")
    out = tmp_path / "results"
    run = microml("atoms", emd, "--out", out)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [
        str(out / f"Acquisition_18_atoms{s}") for s in (".csv", ".csv.json", ".provenance.json")
    ]
    table = pd.read_csv(out / "Acquisition_18_atoms.csv")
    pts = table[["row_px", "col_px"]].to_numpy()
    image = np.asarray(read_file(emd)[0][0])
    a, b = _lattice_vectors(image)
    cells = image.size / abs(a[0] * b[1] - a[1] * b[0])
    assert 0.9 * cells < len(pts) < 1.05 * cells, (len(pts), cells)
    assert np.median(_nn_distances(pts)) == pytest.approx(np.linalg.norm(a), rel=0.05)
    np.testing.assert_allclose(
        table["x_nm"], table["col_px"] * 0.01225, rtol=1e-3
    )  # physical units
    prov = json.loads((out / "Acquisition_18_atoms.provenance.json").read_text())
    assert prov["parameters"]["command"][:2] == ["microml", "atoms"] and prov["model"]["sha256"]

    before = _files(out)
    again = microml("atoms", emd, "--out", out)
    assert again.returncode == 2 and "3 files" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr and _files(out) == before
    assert microml("atoms", emd, "--out", out, "--overwrite", "--quiet").returncode == 0
    assert len(pd.read_csv(out / "Acquisition_18_atoms.csv")) == len(pts)


def test_atoms_abf_with_default_contrast_finds_the_dark_columns(shared_data, tmp_path):
    """ABF-STEM of SrTiO3 (512², 9.33 pm/px): columns are dark. With the default (auto) contrast
    the columns are found (> 400: both sublattices, 612 with dark contrast). Before: 0 columns, an
    empty CSV and exit 0."""
    abf = _need(shared_data / "formats" / "stem_abf_data.hspy")
    out = tmp_path / "abf"
    run = microml("atoms", abf, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out / "stem_abf_data_atoms.csv")
    assert len(table) > 400
    prov = json.loads((out / "stem_abf_data_atoms.provenance.json").read_text())
    assert prov["parameters"]["contrast"] == "auto"
    assert prov["parameters"]["tool_provenance"]["parameters"]["contrast"] == "dark"
    # the columns sit on a lattice: nearest neighbours about one (projected) spacing apart
    assert 8 < np.median(_nn_distances(table[["row_px", "col_px"]].to_numpy())) < 25


def test_pt_single_atoms_image_atoms_complete_and_spectra(shared_data, tmp_path):
    """A Pt/C HAADF image (512² uint32 counts, about half of them 0). atoms: matched to the
    hand labels (Hungarian, ≤ 7 px ≈ the paper's 21-px box IoU 0.5), F1 ≥ 0.4 (the README's level
    for the default model on these images). complete: the image is fully measured, so it is
    refused (exit 2, says how to name the measured pixels), nothing written; before, its zeros
    were 'filled' (mean doubled, exit 0). spectra: no spectral axis, exit 2 at once; before, the
    image rows ran as spectra for 203 s and a 'shift map' was written (exit 0)."""
    from scipy.optimize import linear_sum_assignment

    tif = _need(
        shared_data / "atoms_pt_haadf" / "images" / "025_HAADF_15nm_Sample_PtNC_21Oct20.tif"
    )
    labels = pd.read_csv(shared_data / "atoms_pt_haadf" / "labels" / "025_Results.csv")
    out = tmp_path / "pt"
    run = microml("atoms", tif, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    found = pd.read_csv(out / f"{tif.stem}_atoms.csv")[["row_px", "col_px"]].to_numpy()
    truth = labels[["Y", "X"]].to_numpy(float)
    d = np.linalg.norm(truth[:, None] - found[None], axis=2)
    i, j = linear_sum_assignment(d)
    tp = int((d[i, j] <= 7).sum())
    f1 = 2 * tp / (len(truth) + len(found))
    assert f1 >= 0.4, (tp, len(truth), len(found))

    before = _files(out)
    done = microml("complete", tif, "--out", out)
    assert done.returncode == 2 and "no NaN pixel" in done.stderr and "--mask" in done.stderr
    assert _files(out) == before
    spectra = microml("spectra", tif, "--out", tmp_path / "sp")
    assert spectra.returncode == 2 and "no spectral axis" in spectra.stderr
    assert len(spectra.stderr.strip().splitlines()) == 1 and not (tmp_path / "sp").exists()


@pytest.mark.slow
def test_spectra_lsmo_low_loss_window_around_the_zero_loss_peak(shared_data, tmp_path):
    """40 low-loss EELS spectra (0.5 eV/channel from −50 eV), default settings: the window is
    chosen around the zero-loss peak (all channels gave r 0.70, a 1.76 eV span). Reference: the
    zero-loss-peak centroid of each spectrum (−5…10 eV, counts above 0): Pearson r ≥ 0.98 and
    the same span within 30 %."""
    from napari_microml.io.reader import read_file

    hspy = _need(shared_data / "spectra" / "LSMO_linescan_low_loss.hspy")
    out = tmp_path / "lsmo"
    run = microml("spectra", hspy, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out / "LSMO_linescan_low_loss_spectra.csv")
    data = np.asarray(read_file(hspy)[0][0], float)
    energy = -50 + 0.5 * np.arange(data.shape[1])
    zlp = (energy > -5) & (energy < 10)
    counts = np.clip(data[:, zlp], 0, None)
    centroid = (counts * energy[zlp]).sum(1) / counts.sum(1)
    shift = table["shift_eV"].to_numpy()
    assert len(shift) == 40
    assert np.corrcoef(centroid, shift)[0, 1] >= 0.98
    assert np.ptp(shift) == pytest.approx(np.ptp(centroid), rel=0.3)
    prov = json.loads((out / "LSMO_linescan_low_loss_spectra.provenance.json").read_text())
    lo, hi = prov["parameters"]["tool_provenance"]["parameters"]["channel_range"]
    assert energy[lo] <= 0 < 3.5 <= energy[hi - 1], "the chosen window holds the zero-loss peak"


def test_complete_direct_electron_random_scan_from_its_files(shared_data, tmp_path):
    """A real sparse acquisition: 348 frames of 16×16 (one diffraction pattern per probe
    position), the positions (x, y relative to the scan ROI) and the info file (32×16 scan, ROI
    offset 3, 3). Reference: at every visited pixel the image equals that frame's sum (counts);
    unvisited pixels are filled with an uncertainty > 0. Before: no way to give the positions."""
    from napari_microml.io.reader import read_file

    folder = shared_data / "formats"
    movie = _need(folder / "ROI_Random_Scan_movie.mrc")
    out = tmp_path / "de"
    run = microml(
        "complete",
        movie,
        "--coords",
        folder / "ROI_Random_Scan_scan_coordinates.csv",
        "--scan-info",
        folder / "ROI_Random_Scan_info.txt",
        "--out",
        out,
        "--quiet",
    )
    assert run.returncode == 0, run.stderr
    import tifffile

    image = tifffile.imread(out / "ROI_Random_Scan_movie_complete_image.tif")
    sigma = tifffile.imread(out / "ROI_Random_Scan_movie_complete_uncertainty.tif")
    assert image.shape == (32, 16)
    xy = np.loadtxt(folder / "ROI_Random_Scan_scan_coordinates.csv", delimiter=",", ndmin=2)
    rows, cols = xy[:, 1].astype(int) + 3, xy[:, 0].astype(int) + 3
    sums = np.asarray(read_file(movie)[0][0]).reshape(len(xy), -1).sum(1, dtype=np.float64)
    visited = np.zeros(image.shape, bool)
    visited[rows, cols] = True
    per_pixel = {}
    for r, c, s in zip(rows, cols, sums, strict=True):
        per_pixel.setdefault((r, c), []).append(s)
    for (r, c), s in per_pixel.items():
        assert image[r, c] == pytest.approx(np.mean(s), rel=1e-6)
    assert (sigma[visited] == 0).all() and (sigma[~visited] > 0).all()
    assert np.isfinite(image).all()


def test_complete_truth_with_the_papers_scan_trace_as_mask(shared_data, tmp_path):
    """The paper's spiral trace (mask-1.tif, non-zero = measured, 17.5 %) given with --mask over
    the real image truth-1.tif. Reference: measured pixels returned exactly, σ > 0 exactly where
    nothing was measured, RMS error on the unmeasured pixels within 1.2× the package's local GP
    on this pair (0.67 % of the [0, 1] range, issue #26): ≤ 0.8 % (0.69 % with the kriging
    default). Before: no --mask; the network default gave 5.5 %."""
    import tifffile

    folder = shared_data / "completion"
    truth_file, mask_file = _need(folder / "truth-1.tif"), _need(folder / "mask-1.tif")
    out = tmp_path / "c"
    run = microml("complete", truth_file, "--mask", mask_file, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    truth = tifffile.imread(truth_file)
    measured = tifffile.imread(mask_file) > 0
    image = tifffile.imread(out / "truth-1_complete_image.tif")
    sigma = tifffile.imread(out / "truth-1_complete_uncertainty.tif")
    np.testing.assert_array_equal(image[measured], truth[measured])
    assert (sigma[measured] == 0).all() and (sigma[~measured] > 0).all()
    assert np.sqrt(np.mean((image - truth)[~measured] ** 2)) <= 0.008
    prov = json.loads((out / "truth-1_complete.provenance.json").read_text())
    assert prov["parameters"]["measured_pixels"] == "mask file mask-1.tif"
