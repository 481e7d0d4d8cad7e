"""``analyze_lattice``: sublattices, strain, rotation and polarisation from column positions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from napari_microml.lattice import strain as _strain
from napari_microml.lattice.sublattice import assign_sublattices, nn_distance
from napari_microml.runtime.level import prepare_frame
from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.validate import check_pixel_size
from napari_microml.runtime.workers import drain, progress

AUTO_STRAIN_STD = 0.003  # shells="auto": 5×5 cells above this median 3×3 strain std (fraction)
# the unit of each per-column table column (written beside the CSV: the dock shows % and °)
COLUMN_UNITS = {
    "row": "px",
    "col": "px",
    "sublattice": "index",
    **dict.fromkeys(
        ("exx", "eyy", "exy", "exx_std", "eyy_std", "exy_std"), "fraction (0.01 = 1 %)"
    ),
    "rotation": "rad",
    "rotation_std": "rad",
    **dict.fromkeys(("d_row", "d_col", "d_abs", "d_std", "position_std"), "px"),
    "count": "atoms (0: edge column, -1: not counted)",
    "cross_section": "image intensity × px²",
}


def column_units(columns) -> dict:
    """{column: unit} for the lattice table's ``columns`` that :data:`COLUMN_UNITS` knows."""
    return {str(c): COLUMN_UNITS[str(c)] for c in columns if str(c) in COLUMN_UNITS}


TABLE_COLUMNS = (
    "row",
    "col",
    "sublattice",
    "exx",
    "eyy",
    "exy",
    "rotation",
    "d_row",
    "d_col",
    "d_abs",
    "exx_std",
    "eyy_std",
    "exy_std",
    "rotation_std",
    "d_std",
    "position_std",
)


@dataclass
class LatticeResult:
    """What a lattice analysis found, per column and for the lattice as a whole.

    sublattice : (N,) int, 0 = brightest (by image intensity), else the most numerous site.
    cell : (2, 2) reference lattice vectors (rows a1, a2) in (row, col) px of the primitive cell
        of sublattice 0; a1 is the one nearest the +x (column) direction.
    strain : (N, 3) exx, eyy, exy (fractions; x = columns, y = rows) against ``cell``.
    rotation : (N,) local lattice rotation (rad; positive turns +x towards +y).
    displacement : (N, 2) (row, col) px offset from the centre of the nearest shell of the
        other sublattice (NaN where undefined).
    strain_std, rotation_std, displacement_std : 1σ, propagated from ``position_std``.
    position_std : (N,) the positional σ (px) used: given, or estimated from the fit residuals.
    lattice : dict of the reference lattice parameters a, b (px, and pm with a pixel size) and
        gamma (deg), each with the spread over the reference columns (``*_std``) and the error
        of the mean (``*_sem``).
    """

    positions: np.ndarray
    sublattice: np.ndarray
    cell: np.ndarray
    strain: np.ndarray
    rotation: np.ndarray
    displacement: np.ndarray
    strain_std: np.ndarray
    rotation_std: np.ndarray
    displacement_std: np.ndarray
    position_std: np.ndarray
    reference: np.ndarray
    lattice: dict
    pixel_size: float | None = None
    std_source: str = "given"
    parameters: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def n_sublattices(self) -> int:
        """Number of sublattices found."""
        return int(self.sublattice.max()) + 1 if len(self.sublattice) else 0

    def table(self):
        """Return the per-column table as a pandas DataFrame.

        Positions px, strain fractions, rotation rad, displacement px and their 1σ: the CSV
        export and the widget's Points features.
        """
        import pandas as pd

        d_abs = np.hypot(self.displacement[:, 0], self.displacement[:, 1])
        cols = [
            self.positions[:, 0],
            self.positions[:, 1],
            self.sublattice,
            *self.strain.T,
            self.rotation,
            *self.displacement.T,
            d_abs,
            *self.strain_std.T,
            self.rotation_std,
            self.displacement_std[:, 0],
            self.position_std,
        ]
        return pd.DataFrame(dict(zip(TABLE_COLUMNS, cols, strict=True)))


def _prepared(image: np.ndarray) -> np.ndarray:
    """Return a float64 copy, stuck pixels repaired and an SPM scan levelled, gaps filled.

    A stuck pixel would make its column the brightest sublattice; a tilt would rank the
    columns along it.
    """
    img = np.array(image, np.float64)
    prepare_frame(img)
    if not np.isfinite(img).all():
        img = np.where(np.isfinite(img), img, np.nanmedian(img))
    return img


def _at_columns(img: np.ndarray, positions: np.ndarray, d0: float) -> np.ndarray:
    from scipy import ndimage as ndi

    img = ndi.gaussian_filter(img, max(0.15 * d0, 0.5))
    return ndi.map_coordinates(img, positions.T, order=1, mode="nearest")


def column_intensity(image: np.ndarray, positions: np.ndarray, d0: float) -> np.ndarray:
    """Image value at each column after smoothing over ~0.15 of the column spacing."""
    return _at_columns(_prepared(image), positions, d0)


def columns_are_dark(image, positions) -> bool:
    """Tell whether the columns are darker than the image around them (ABF/BF).

    Rather than brighter (HAADF): the image at the columns against its median, both read on
    the same prepared (repaired, levelled) copy.
    """
    img = _prepared(image)
    at = _at_columns(img, np.asarray(positions, float), 4.0)
    return bool(np.median(at) < np.median(img))


def _check_inputs(positions, image, reference, position_std):
    try:
        pos = np.asarray(positions, np.float64)
    except (TypeError, ValueError):
        raise ValueError("positions must be an (N, 2) array of (row, col) pixel numbers.") from None
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must be (N, 2) (row, col) in pixels; got shape {pos.shape}.")
    if not np.isfinite(pos).all():
        raise ValueError("Some positions are NaN or infinite; remove those points first.")
    if len(pos) < 6:
        raise ValueError(f"Only {len(pos)} columns: a lattice analysis needs at least 6.")
    img = None
    if image is not None:
        img = np.asarray(image)
        if img.ndim != 2 or img.dtype.kind not in "fiub":
            raise ValueError(f"image must be one 2D grey image; got shape {img.shape}.")
        if not np.isfinite(img).any():
            raise ValueError("The image has no finite pixels.")
    ref = None
    if reference is not None:
        ref = np.asarray(reference)
        if ref.shape != (len(pos),) or ref.dtype != bool:
            raise ValueError(
                f"reference must be a bool mask of the {len(pos)} columns; got "
                f"shape {ref.shape} dtype {ref.dtype}."
            )
        if ref.sum() < 6:
            raise ValueError(
                f"The reference region holds {int(ref.sum())} columns; it needs at least 6."
            )
    std = None
    if position_std is not None:
        std = np.broadcast_to(np.asarray(position_std, np.float64), (len(pos),)).copy()
        if not (np.isfinite(std) & (std > 0)).any():
            raise ValueError("position_std must hold positive numbers (px).")
    return pos, img, ref, std


def analyze_lattice_iter(
    positions,
    *,
    image=None,
    reference=None,
    pixel_size=None,
    position_std=None,
    shells: int | str = "auto",
    sublattice=None,
    input_name: str | None = None,
):
    """Analyse a lattice like :func:`analyze_lattice`, as a generator that reports progress.

    It takes the same parameters as :func:`analyze_lattice`, and two more (below).

    Parameters
    ----------
    sublattice : (N,) int, optional
        A label 0, 1, … per column that replaces the automatic sublattice assignment (the
        user's edits); sublattice 0 needs at least 6 columns, which define the cell.
    input_name : str, optional
        Name of the input (file or layer) recorded in ``provenance['input_layer']``.

    Yields
    ------
    tuple
        ``("progress", done, 4, message)`` before each of the four steps (sublattices, local
        affine fits, strain and errors, displacements) and when done.

    Returns
    -------
    LatticeResult
        The generator's return value, as :func:`analyze_lattice` returns it.
    """
    pos, img, ref, std_in = _check_inputs(positions, image, reference, position_std)
    pixel_size = check_pixel_size(pixel_size)
    if shells != "auto" and shells not in _strain.NEIGHBOURS:
        raise ValueError(
            f"shells must be 1 (3×3 cells per fit), 2 (5×5 cells) or 'auto', not {shells!r}."
        )
    yield progress(0, 4, "sublattices")
    tree = cKDTree(pos)
    d0 = nn_distance(pos, tree)
    intensity = None if img is None else column_intensity(img, pos, d0)
    if sublattice is None:
        labels, cell = assign_sublattices(pos, intensity, tree=tree, d0=d0)
    else:
        labels = np.asarray(sublattice, int).reshape(-1)
        if labels.shape != (len(pos),) or labels.min() < 0:
            raise ValueError("sublattice must give a label 0, 1, … for every column.")
        from napari_microml.lattice.sublattice import translations

        if (labels == 0).sum() < 6:
            raise ValueError("Sublattice 0 needs at least 6 columns to define the cell.")
        cell = translations(pos[labels == 0])
    yield progress(1, 4, "local affine fits")
    refmask = np.ones(len(pos), bool) if ref is None else ref
    fit = _fit(pos, labels, cell, 1 if shells == "auto" else shells, refmask, std_in)
    reason = "chosen by the caller"
    if shells == "auto":
        std3 = fit["strain_std"][:, :2]
        noise = float(np.nanmedian(std3)) if np.isfinite(std3).any() else np.nan
        # a noisy 3×3 fit is traded for 5×5 cells: ~2.9× less noise, half the resolution
        wide = bool(noise > AUTO_STRAIN_STD)
        if wide:
            fit = _fit(pos, labels, cell, 2, refmask, std_in)
        reason = (
            f"3×3 median strain std {100 * noise:.2f} % {'>' if wide else '≤'} "
            f"{100 * AUTO_STRAIN_STD:.1f} %"
        )
    F, cell, sigma, source = fit["F"], fit["cell"], fit["sigma"], fit["source"]
    yield progress(2, 4, "strain and errors")
    strain, rotation = fit["strain"], fit["rotation"]
    strain_std, rotation_std = fit["strain_std"], fit["rotation_std"]
    yield progress(3, 4, "displacements")
    disp, disp_std = _strain.displacement(pos, labels, F, sigma)
    lattice = _lattice_parameters(cell, F[refmask], pixel_size)
    params = {
        "n_columns": len(pos),
        "image": img is not None,
        "reference_columns": int(refmask.sum()),
        "pixel_size_nm": pixel_size,
        "position_std": source,
        "shells": fit["shells"],
        "shells_requested": shells,
        "shells_reason": reason,
        "user_sublattice": sublattice is not None,
    }
    prov = make_provenance("lattice_analysis", parameters=params, input_name=input_name)
    yield progress(4, 4, "done")
    return LatticeResult(
        pos,
        labels,
        cell,
        strain,
        rotation,
        disp,
        strain_std,
        rotation_std,
        disp_std,
        sigma,
        refmask,
        lattice,
        pixel_size,
        source,
        params,
        prov,
    )


def _fit(pos, labels, cell, shells, refmask, std_in) -> dict:
    """Fit one shell size's local affine maps against the reference; strain and its error."""
    F, nb, W, rss, expected = _strain.fit_deformation(pos, labels, cell, shells=shells)
    good = refmask & np.isfinite(F).all(axis=(1, 2))
    if good.sum() >= 3:  # the reference cell: the reference columns' typical deformation
        Fbar = _strain.reference_deformation(F[good])
        cell = cell @ Fbar.T
        # the same fits against the new cell (ideal vectors Fbar·r): F → F·Fbar⁻¹, W → W·Fbar⁻¹
        F, W = F @ np.linalg.inv(Fbar), W @ np.linalg.inv(Fbar)
    strain, rotation = _strain.strain_rotation(F)
    from_residuals = _strain.residual_sigma(nb, rss, expected)
    if std_in is not None:
        good_std = np.isfinite(std_in) & (std_in > 0)
        given = np.where(good_std, std_in, np.nanmedian(std_in[good_std]))
        # the given σ keep their column-to-column pattern; their scale is set by the fits'
        # residuals (the usual reduced-χ² scaling), per sublattice (dim columns fit worse)
        ratio = from_residuals / given
        scale = np.ones(len(pos))
        for sub in np.unique(labels):
            r = ratio[labels == sub]
            scale[labels == sub] = np.nanmedian(r) if np.isfinite(r).any() else 1.0
        sigma = given * scale
        source = (
            "given × "
            + "/".join(f"{np.median(scale[labels == q]):.2f}" for q in np.unique(labels))
            + " (fit residuals, per sublattice)"
        )
    else:
        sigma, source = from_residuals, "fit residuals"
    strain_std, rotation_std = _strain.strain_std(nb, W, sigma)
    return {
        "F": F,
        "cell": cell,
        "strain": strain,
        "rotation": rotation,
        "sigma": sigma,
        "source": source,
        "strain_std": strain_std,
        "rotation_std": rotation_std,
        "shells": shells,
    }


def _lattice_parameters(cell: np.ndarray, F_ref: np.ndarray, pixel_size: float | None) -> dict:
    """Measure a = |a1|, b = |a2| and their angle over the reference columns' local cells."""
    ok = np.isfinite(F_ref).all(axis=(1, 2))
    local = np.einsum("nab,kb->nka", F_ref[ok], cell)  # (n, 2, 2) local a1, a2
    a = np.linalg.norm(local[:, 0], axis=1)
    b = np.linalg.norm(local[:, 1], axis=1)
    gamma = np.degrees(np.arccos(np.clip((local[:, 0] * local[:, 1]).sum(1) / (a * b), -1, 1)))
    out = {
        "columns": int(ok.sum()),
        "a_px": float(np.linalg.norm(cell[0])),
        "b_px": float(np.linalg.norm(cell[1])),
        "gamma_deg": float(
            np.degrees(
                np.arccos(
                    np.clip(
                        cell[0] @ cell[1] / (np.linalg.norm(cell[0]) * np.linalg.norm(cell[1])),
                        -1,
                        1,
                    )
                )
            )
        ),
    }
    n = max(int(ok.sum()), 1)
    for key, v in (("a_px", a), ("b_px", b), ("gamma_deg", gamma)):
        sd = float(np.std(v)) if len(v) > 1 else float("nan")
        out[f"{key}_std"] = sd
        out[f"{key}_sem"] = float(sd / np.sqrt(n))
    if pixel_size is not None:
        for key in ("a", "b"):
            for suffix in ("", "_std", "_sem"):
                out[f"{key}_pm{suffix}"] = out[f"{key}_px{suffix}"] * pixel_size * 1000.0
    return out


def analyze_lattice(
    positions,
    *,
    image=None,
    reference=None,
    pixel_size=None,
    position_std=None,
    shells: int | str = "auto",
):
    """Sublattices, local strain, rotation and polarisation of a lattice of atomic columns.

    Parameters
    ----------
    positions : (N, 2) float, (row, col) px, e.g. ``find_atoms(...).positions``.
    image : (H, W), optional. Needed to tell sublattices apart by intensity (sublattice 0 is the
        brightest); without it sites are told apart by geometry only.
    reference : (N,) bool, optional. Columns that define the unstrained lattice (default all);
        the reference cell is their average local cell (per component, the mean between the
        25th and 75th percentiles). With two lattices in view, pass the columns of one of them.
    pixel_size : float, optional, nm per pixel: lattice parameters are then also given in pm.
    position_std : float or (N,) px, optional, 1σ of each position (``features["position_std"]``
        of the atom finder); its overall scale is checked against the local fits' residuals,
        and without it σ is estimated from those residuals alone.
    shells : 1 fits each column's strain to the 3×3 cells around it; 2 to 5×5 cells (about 3×
        less noise for half the spatial resolution: dim or noisy images); "auto" (default) uses
        5×5 when the 3×3 fit's median propagated std of exx/eyy is above 0.3 % (about 100
        counts per column), else 3×3. ``parameters["shells"]`` says which was used and why.

    Returns
    -------
    LatticeResult (see its docstring).
    """
    return drain(
        analyze_lattice_iter(
            positions,
            image=image,
            reference=reference,
            pixel_size=pixel_size,
            position_std=position_std,
            shells=shells,
        )
    )
