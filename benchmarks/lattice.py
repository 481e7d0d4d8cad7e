"""Benchmark the lattice analysis (mm.analyze_lattice, mm.count_atoms) beside Atomap.

Prints one JSON document with these parts (``--parts``):

* ``strain``: simulated lattices with exact truth (synth/strained.py; square, 16 px spacing,
  column σ 1.6 px) - a +2 % exx step (reference: the left part), a ±2 % linear exx gradient and
  an edge dislocation (columns > 5 cells from the core) - at 100, 1,000 and 10,000 counts per
  column; positions refined on the noisy image (atoms.refine) from starts 0.3 px off. RMS error
  of exx, eyy, exy (3×3- and 5×5-cell fits), the error over the reported std, and Atomap 0.4's
  nearest-neighbour distance method (atom spacing along the x and y zone axes over the
  reference spacing) on the same positions.
* ``auto``: the ``shells="auto"`` adoption run - the strain scenarios on fresh image seeds
  (5001, 5101, 5201) with 3×3, 5×5 and auto fits, and how often auto picked 5×5.
* ``limits``: the information limit - see :func:`part_limits`.
* ``polarisation``: a perovskite with B columns off-centre by ±0.6 px in two domains; sublattice
  accuracy, RMS error of the B displacement, std ratio; Atomap's
  get_middle_position_list + get_vector_shift_list on the same positions and our sublattices.
* ``counting``: columns of 1–8 atoms (intensity ∝ count) at 30…3,000 counts per atom: exact
  count fraction and components; baseline: Atomap's Voronoi integration (am.integrate) + a
  tied-covariance Gaussian mixture chosen by BIC (Atomap's quant model, sklearn), both scored on
  the columns whose Voronoi cell is closed by neighbours (edge columns are not counted). Then a
  perovskite (A 1.0, B 0.45 per atom): one mixture per sublattice against one for all columns.
* ``speed``: analyze_lattice on 100,000 columns and count_atoms on a 1024² image (wall and
  process CPU seconds, with the machine's load average); Atomap's zone-axis construction on
  2,500 columns for scale.
* ``real``: stem_abf_data.hspy (SrTiO3 [110] ABF, 9.33 pm/px from the hspy axes' scale, the
  file has no units; columns by mm.find_atoms contrast="dark", the image inverted so the
  darkest columns are sublattice 0) and Acquisition_18.emd (0.01225 nm/px; metadata sample
  "STO laser cut"): sublattices, lattice parameters ± spread/sem, strain flatness.

Usage: ``python benchmarks/lattice.py [--seeds 3] [--parts strain,polarisation,...]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "formats"
DOSES = (100, 1000, 10_000)


def _atomap():
    """Atomap's API, or the reason it cannot be used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import atomap.analysis_tools as an
            import atomap.api as am  # noqa: F401 - api first: atomap's own import order
        return am, an, None
    except Exception as err:  # noqa: BLE001 - recorded in the JSON
        return None, None, f"{type(err).__name__}: {err}"


def measured(sample, seed):
    from napari_microml.atoms.refine import refine_positions

    rng = np.random.default_rng(seed)
    h, w = sample.image.shape
    start = np.clip(
        sample.positions + rng.normal(0, 0.3, sample.positions.shape), 0, [h - 1, w - 1]
    )
    pos, feats = refine_positions(sample.image, start)
    return pos, feats["position_std"]


def true_strain(sample, reference):
    """Exact strain against the reference columns' true F, summarised as the analysis does."""
    from napari_microml.lattice.strain import reference_deformation, strain_rotation

    fbar = reference_deformation(sample.F[reference])
    return strain_rotation(sample.F @ np.linalg.inv(fbar))[0]


def rms(a, axis=0):
    return np.sqrt(np.nanmean(np.asarray(a, float) ** 2, axis=axis))


def atomap_spacing_strain(am, pos, image, truth, keep, reference):
    """Atomap's distance method: the spacing of neighbouring atoms along the zone axes nearest x
    and y, over its median in the reference; compared with the truth at the pair's midpoint."""
    from scipy.spatial import cKDTree

    sub = am.Sublattice(pos[:, ::-1], image=image)
    sub.construct_zone_axes()
    zones = sub.zones_axis_average_distances
    out = {}
    tree = cKDTree(pos)
    ref_tree = cKDTree(pos[reference])
    for comp, axis in (("exx", 0), ("eyy", 1)):
        z = max(zones[:4], key=lambda v: abs(v[axis]) / np.hypot(*v))
        x, y, d = sub.get_atom_distance_list_from_zone_vector(z)
        mid = np.column_stack([y, x])
        d = np.asarray(d)
        in_ref = ref_tree.query(mid, k=1)[0] < 8
        eps = d / np.median(d[in_ref]) - 1
        _, j = tree.query(mid, k=2)  # the pair's two columns
        ok = keep[j].all(axis=1)
        t = truth[j, axis].mean(axis=1)
        out[comp] = float(rms((eps - t)[ok]))
    return out


def part_strain(seeds, am, shells_list=(1, 2), seed_base=1):
    import napari_microml as mm
    from napari_microml.synth.strained import strained_lattice

    rows = []
    for scenario in ("step", "gradient", "dislocation"):
        for dose in DOSES:
            for seed in range(seeds):
                s = strained_lattice(
                    scenario, dose=dose, shape=(320, 320), seed=100 * seed + seed_base
                )
                pos, std = measured(s, seed)
                ref = s.positions[:, 1] < 140 if scenario == "step" else np.ones(len(pos), bool)
                truth = true_strain(s, ref)
                if scenario == "step":
                    keep = np.abs(s.positions[:, 1] - 160) > 24
                elif scenario == "dislocation":
                    keep = np.hypot(*(s.positions - 164).T) > 5 * 16
                else:
                    keep = np.ones(len(pos), bool)
                row = {"scenario": scenario, "dose": dose, "seed": seed}
                for shells in shells_list:
                    lat = mm.analyze_lattice(
                        pos,
                        image=s.image,
                        reference=ref if scenario == "step" else None,
                        position_std=std,
                        shells=shells,
                    )
                    err = (lat.strain - truth)[keep]
                    ok = np.isfinite(err).all(axis=1)
                    row[f"rms_pct_{shells}"] = (100 * rms(err[ok])).round(4).tolist()
                    row[f"err_over_std_{shells}"] = (
                        (rms(err[ok]) / rms(lat.strain_std[keep][ok])).round(3).tolist()
                    )
                    row[f"defined_{shells}"] = round(float(ok.mean()), 4)
                    if shells == "auto":
                        row["auto_picked_5x5"] = float(lat.parameters["shells"] == 2)
                if am is not None:
                    try:
                        a = atomap_spacing_strain(am, pos, s.image, truth, keep, ref)
                        row["atomap_rms_pct"] = {k: round(100 * v, 4) for k, v in a.items()}
                    except Exception as err:  # noqa: BLE001
                        row["atomap_error"] = f"{type(err).__name__}: {err}"
                rows.append(row)
    return _summarise(rows, ("scenario", "dose"))


def _summarise(rows, keys):
    """Mean over seeds of every numeric (or list) field, grouped by ``keys``."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        entry = dict(zip(keys, key, strict=True))
        for field in rs[0]:
            if field in keys or field == "seed":
                continue
            vals = [r[field] for r in rs if field in r]
            if isinstance(vals[0], dict):
                entry[field] = {k: round(float(np.mean([v[k] for v in vals])), 4) for k in vals[0]}
            elif isinstance(vals[0], (list, float, int)):
                entry[field] = np.round(np.mean(np.asarray(vals, float), axis=0), 4).tolist()
            else:
                entry[field] = vals[0]
        out.append(entry)
    return out


def part_polarisation(seeds, am, an, seed_base=200):
    import napari_microml as mm
    from napari_microml.synth.strained import _sites, strained_lattice

    rows = []
    for dose in DOSES:
        for seed in range(seeds):
            s = strained_lattice(
                "domains", structure="perovskite", dose=dose, seed=seed_base + seed
            )
            pos, std = measured(s, seed)
            lat = mm.analyze_lattice(pos, image=s.image, position_std=std)
            b = (s.sublattice == 1) & np.isfinite(lat.displacement).all(axis=1)
            err = lat.displacement[b] - s.shift[b]
            # no unbiased estimator beats √(σ_B² + σ_A²/4) at the Cramér-Rao bound of each column
            amp = _sites("perovskite", 16.0, s.image.shape, 8.0)[2]
            crlb = [_crlb_px(dose, float(a), s.params["sigma"], 0.1) for a in amp]
            row = {
                "dose": dose,
                "seed": seed,
                "sublattice_accuracy": float((lat.sublattice == s.sublattice).mean()),
                "b_rms_error_px": float(rms(err.ravel())),
                "b_crlb_floor_px": float(np.sqrt(crlb[1] ** 2 + crlb[0] ** 2 / 4)),
                "err_over_std": (rms(err) / rms(lat.displacement_std[b])).round(3).tolist(),
                "b_defined": float(b.sum() / (s.sublattice == 1).sum()),
            }
            if am is not None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        A = am.Sublattice(pos[lat.sublattice == 0][:, ::-1], image=s.image)
                        B = am.Sublattice(pos[lat.sublattice == 1][:, ::-1], image=s.image)
                        A.construct_zone_axes()
                        za0, za1 = A.zones_axis_average_distances[0:2]
                        middle = an.get_middle_position_list(A, za0, za1)
                        vec = np.asarray(an.get_vector_shift_list(B, middle), float)
                    # vec rows: middle x, y and middle − B (x, y): B's offset is minus that
                    from scipy.spatial import cKDTree

                    _, j = cKDTree(s.positions).query(vec[:, 1::-1], k=1)
                    e = -vec[:, [3, 2]] - s.shift[j]
                    row["atomap_b_rms_error_px"] = float(rms(e.ravel()))
                    row["atomap_b_defined"] = float(len(vec) / (s.sublattice == 1).sum())
                except Exception as err:  # noqa: BLE001
                    row["atomap_error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
    return _summarise(rows, ("dose",))


def part_counting(seeds, am):
    import napari_microml as mm
    from napari_microml.synth.strained import strained_lattice

    rows = []
    for dose in (30, 100, 300, 1000, 3000):
        for seed in range(seeds):
            s = strained_lattice("counts", dose=dose, seed=300 + seed)
            c = mm.count_atoms(s.image, s.positions)
            row = {
                "dose": dose,
                "seed": seed,
                "exact": float((c.counts == s.counts)[~c.edge].mean()),
                "edge_fraction": float(c.edge.mean()),
                "n_components": c.n_components,
            }
            if am is not None:
                try:
                    import hyperspy.api as hs
                    from sklearn.mixture import GaussianMixture

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        inten = am.integrate(
                            hs.signals.Signal2D(s.image),
                            s.positions[:, 1],
                            s.positions[:, 0],
                            method="Voronoi",
                            show_progressbar=False,
                        )[0]
                    x = np.asarray(inten, float).reshape(-1, 1)
                    models = [
                        GaussianMixture(g, covariance_type="tied", random_state=0).fit(x)
                        for g in range(1, 13)
                    ]
                    best = min(models, key=lambda m: m.bic(x))
                    order = np.argsort(best.means_.ravel())
                    rank = np.empty_like(order)
                    rank[order] = np.arange(len(order))
                    counts = rank[best.predict(x)] + 1
                    row["atomap_bic_exact"] = float(
                        (counts == s.counts)[~c.edge].mean()
                    )  # same columns
                    row["atomap_bic_components"] = int(best.n_components)
                except Exception as err:  # noqa: BLE001
                    row["atomap_error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
    # a perovskite (A 1.0, B 0.45 per atom, 1–8 atoms): one mixture per sublattice vs one for all
    for dose in (300, 1000, 3000):
        for seed in range(seeds):
            s = strained_lattice("counts", structure="perovskite", dose=dose, seed=400 + seed)
            per = mm.count_atoms(s.image, s.positions, sublattice=s.sublattice)
            pooled = mm.count_atoms(s.image, s.positions)
            rows.append(
                {
                    "dose": f"perovskite {dose}",
                    "seed": seed,
                    "exact": float((per.counts == s.counts)[~per.edge].mean()),
                    "pooled_exact": float((pooled.counts == s.counts)[~pooled.edge].mean()),
                    "edge_fraction": float(per.edge.mean()),
                    "n_components": [len(m.means) for m in per.groups.values()],
                }
            )
    return _summarise(rows, ("dose",))


def _crlb_px(dose, amp, sigma, background):
    """Cramér-Rao bound (px) on one coordinate of an isolated Gaussian column of ``amp`` × dose
    counts on the simulator's flat background, Poisson noise, everything else known."""
    y, x = np.mgrid[-12:13, -12:13].astype(float) * (sigma / 2.0)
    peak = dose / (2 * np.pi * sigma**2)
    g = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    mu = amp * peak * g + background * peak
    dmu = amp * peak * g * x / sigma**2
    pix = (sigma / 2.0) ** 2  # the grid is finer than a pixel
    info = (dmu**2 / mu).sum() * pix
    return float(1 / np.sqrt(info))


def part_limits(seeds):
    """How close the strain and displacement errors are to what the positions allow.

    For each scenario and dose: the finder's real per-column position error (RMS of one
    coordinate against the truth, per sublattice) and the Cramér-Rao bound of the image model;
    then Monte-Carlo - the true positions plus Gaussian noise of that size (and of the bound), the
    same analysis - gives the error floor of each fit with perfect sublattices and a perfect
    finder of that precision; σ = 0 gives the model's own bias (affine fit, reference cell).
    The bulk formula for a full square shell of spacing a: std exx = σ / (a √6) (3×3),
    σ / (a √50) (5×5); displacement std = √(σ_B² + σ_A² / 4).
    """
    from napari_microml.lattice.analyze import analyze_lattice_iter
    from napari_microml.runtime.workers import drain
    from napari_microml.synth.strained import _sites, strained_lattice

    rows = []
    cases = [(sc, "square") for sc in ("step", "gradient", "dislocation")] + [
        ("domains", "perovskite")
    ]
    for scenario, structure in cases:
        for dose in DOSES:
            for seed in range(seeds):
                kw = {"shape": (320, 320)} if structure == "square" else {}
                base = 100 * seed + 1 if structure == "square" else 200 + seed
                s = strained_lattice(scenario, structure=structure, dose=dose, seed=base, **kw)
                pos, _ = measured(s, seed)
                subs = np.unique(s.sublattice)
                inner = ((s.positions > 8) & (s.positions < np.array(s.image.shape) - 8)).all(
                    axis=1
                )
                sig = {
                    int(q): float(rms((pos - s.positions)[inner & (s.sublattice == q)].ravel()))
                    for q in subs
                }
                amp = _sites(structure, 16.0, s.image.shape, 8.0)[
                    2
                ]  # the simulator's column brightness
                crlb = {q: _crlb_px(dose, float(amp[q]), s.params["sigma"], 0.1) for q in sig}
                row = {
                    "scenario": scenario,
                    "dose": dose,
                    "seed": seed,
                    "finder_sigma_px": [round(sig[q], 4) for q in sorted(sig)],
                    "crlb_sigma_px": [round(crlb[q], 4) for q in sorted(crlb)],
                }
                if scenario == "step":
                    ref, keep = s.positions[:, 1] < 140, np.abs(s.positions[:, 1] - 160) > 24
                elif scenario == "dislocation":
                    ref, keep = None, np.hypot(*(s.positions - 164).T) > 5 * 16
                else:
                    ref, keep = None, np.ones(len(pos), bool)
                # columns whose 5×5 shell lies inside the image (no edge loss)
                deep = ((s.positions > 40) & (s.positions < np.array(s.image.shape) - 40)).all(
                    axis=1
                )
                rng = np.random.default_rng(1000 + seed)
                for name, sd in (
                    ("noise_free", {q: 0.0 for q in sig}),
                    ("finder", sig),
                    ("crlb", crlb),
                ):
                    per_q = np.array([sd[int(q)] for q in s.sublattice])
                    errs = {}
                    derr = []
                    for _ in range(1 if name == "noise_free" else 4):
                        p = s.positions + rng.normal(0, 1, pos.shape) * per_q[:, None]
                        for shells in (1, 2) if structure == "square" else (1,):
                            lat = drain(
                                analyze_lattice_iter(
                                    p,
                                    reference=ref,
                                    shells=shells,
                                    position_std=np.maximum(per_q, 1e-3),
                                    sublattice=s.sublattice,
                                )
                            )
                            if structure == "square":
                                truth = true_strain(
                                    s, np.ones(len(p), bool) if ref is None else ref
                                )
                                for where, m in (("", keep), ("_interior", keep & deep)):
                                    e = (lat.strain - truth)[m]
                                    errs.setdefault((shells, where), []).append(
                                        e[np.isfinite(e).all(axis=1)]
                                    )
                            else:
                                b = (s.sublattice == 1) & np.isfinite(lat.displacement).all(axis=1)
                                derr.append((lat.displacement[b] - s.shift[b]).ravel())
                    for key, e in errs.items():
                        if isinstance(key, tuple) and e:
                            row[f"{name}_rms_pct_{key[0]}{key[1]}"] = (
                                (100 * rms(np.concatenate(e))).round(4).tolist()
                            )
                    if derr:
                        row[f"{name}_b_rms_px"] = round(float(rms(np.concatenate(derr))), 4)
                a = 16.0
                sa = sig[0]
                if structure == "square":
                    row["bulk_formula_exx_pct"] = [
                        round(100 * sa / (a * np.sqrt(6)), 4),
                        round(100 * sa / (a * np.sqrt(50)), 4),
                    ]
                    row["sigma_needed_for_0.5pct_px"] = [
                        round(0.005 * a * np.sqrt(6), 4),
                        round(0.005 * a * np.sqrt(50), 4),
                    ]
                else:
                    row["bulk_formula_b_px"] = round(
                        float(np.sqrt(sig[1] ** 2 + sig[0] ** 2 / 4)), 4
                    )
                rows.append(row)
    return _summarise(rows, ("scenario", "dose"))


def _timed(fn, repeat=3):
    best_wall, best_cpu = np.inf, np.inf
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return round(best_wall, 3), round(best_cpu, 3)


def part_speed(am):
    import napari_microml as mm
    from napari_microml.synth.strained import strained_lattice

    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(317), np.arange(317), indexing="ij")
    pos = np.column_stack([i.ravel() * 16.0, j.ravel() * 16.0])[:100_000] + rng.normal(
        0, 0.05, (100_000, 2)
    )
    mm.analyze_lattice(pos[(pos[:, 0] < 500) & (pos[:, 1] < 500)])  # warm-up
    out = {"load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    out["analyze_lattice_100k_wall_cpu_s"] = _timed(lambda: mm.analyze_lattice(pos))
    s = strained_lattice("counts", dose=300, shape=(1024, 1024), seed=5)
    out["count_atoms_1024_columns"] = int(len(s.positions))
    out["count_atoms_1024_wall_cpu_s"] = _timed(lambda: mm.count_atoms(s.image, s.positions))
    if am is not None:
        small = pos[(pos[:, 0] < 50 * 16) & (pos[:, 1] < 50 * 16)]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sub = am.Sublattice(small[:, ::-1], image=np.zeros((820, 820)))
            sub.construct_zone_axes()
        out["atomap_construct_zone_axes_s"] = {
            "columns": int(len(small)),
            "seconds": round(time.perf_counter() - t, 3),
        }
        out["ours_same_columns_wall_cpu_s"] = _timed(lambda: mm.analyze_lattice(small))
    return out


def _flatness(lat):
    """Strain over the reference-free map: mean and sem of each quadrant, spread vs reported std."""
    ok = np.isfinite(lat.strain).all(axis=1)
    e, p = lat.strain[ok], lat.positions[ok]
    mid = np.median(p, axis=0)
    quads = []
    for qr in (p[:, 0] < mid[0], p[:, 0] >= mid[0]):
        for qc in (p[:, 1] < mid[1], p[:, 1] >= mid[1]):
            q = e[qr & qc]
            quads.append(
                {
                    "mean_pct": (100 * q.mean(0)).round(3).tolist(),
                    "sem_pct": (100 * q.std(0) / np.sqrt(len(q))).round(3).tolist(),
                }
            )
    mad = 1.4826 * np.median(np.abs(e - np.median(e, 0)), axis=0)
    return {
        "spread_pct": (100 * e.std(0)).round(3).tolist(),
        "robust_spread_pct": (100 * mad).round(3).tolist(),
        "median_reported_std_pct": (100 * np.median(lat.strain_std[ok], 0)).round(3).tolist(),
        "quadrants": quads,
    }


def _scan_signature(lat, shape, band=16):
    """Whether what departs from flat is locked to the scan frame rather than the crystal.

    Mean strain of the first and last ``band`` px of the lines (columns x) and of the frame
    (rows y): a scan's line start and frame start distort, its ends do not, while a crystal
    does not know where the frame begins. Then the exx profile along x (32 px bands): a profile
    the same in the top and bottom halves (correlation r) and flat along y is the same in every
    line, i.e. locked to the fast scan.
    """
    ok = np.isfinite(lat.strain).all(axis=1)
    e, p = lat.strain[ok], lat.positions[ok]
    h, w = shape
    out = {}
    for name, m in (
        ("line_start", p[:, 1] < band),
        ("line_end", p[:, 1] >= w - band),
        ("frame_start", p[:, 0] < band),
        ("frame_end", p[:, 0] >= h - band),
    ):
        out[f"{name}_mean_pct"] = (100 * e[m].mean(0)).round(3).tolist()
    inner = (p[:, 0] >= 2 * band) & (p[:, 1] >= 2 * band)  # past the scan's start
    e, p = e[inner], p[inner]
    top = p[:, 0] < np.median(p[:, 0])
    for axis, name in ((1, "x"), (0, "y")):
        idx = np.minimum(p[:, axis] // 32, max(shape) // 32 - 1).astype(int)
        bins = np.unique(idx)
        prof = np.array([e[idx == b, 0].mean() for b in bins])
        resid = e[:, 0] - prof[np.searchsorted(bins, idx)]
        out[f"exx_profile_along_{name}_explains"] = round(float(1 - resid.var() / e[:, 0].var()), 3)
        if name == "x":
            both = [b for b in bins if (top & (idx == b)).any() and (~top & (idx == b)).any()]
            halves = [[e[t & (idx == b), 0].mean() for b in both] for t in (top, ~top)]
            out["exx_profile_along_x_pct"] = (100 * prof).round(3).tolist()
            out["exx_profile_top_vs_bottom_r"] = round(float(np.corrcoef(*halves)[0, 1]), 3)
    mid = np.median(p, axis=0)
    quads = [
        e[((p[:, 0] < mid[0]) == r) & ((p[:, 1] < mid[1]) == c)].mean(0)
        for r in (True, False)
        for c in (True, False)
    ]
    out["past_scan_start_max_abs_quadrant_mean_pct"] = (
        (100 * np.abs(quads).max(axis=0)).round(3).tolist()
    )
    out["past_scan_start_spread_pct"] = (100 * e.std(0)).round(3).tolist()
    return out


def part_real():
    import napari_microml as mm

    out = {}
    for name, contrast in (("stem_abf_data.hspy", "dark"), ("Acquisition_18.emd", "bright")):
        path = DATA / name
        if not path.is_file():
            out[name] = "missing"
            continue
        data, kw, _ = mm.read_file(path)[0]
        img = np.asarray(data, float)
        # Acquisition_18: nm; stem_abf: a scale without unit (the data README: 9.33 pm/px)
        pixel_nm = float(
            kw["metadata"]["napari_microml"].get("unlabelled_scale", {}).get("x", kw["scale"][-1])
        )
        found = mm.find_atoms(img, contrast=contrast)
        lat = mm.analyze_lattice(
            found.positions,
            image=-img if contrast == "dark" else img,
            pixel_size=pixel_nm,
            position_std=found.features["position_std"].to_numpy(),
        )
        L = {
            k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v)
            for k, v in lat.lattice.items()
        }
        entry = {
            "pixel_size_nm": pixel_nm,
            "columns": int(len(found.positions)),
            "columns_per_sublattice": np.bincount(lat.sublattice).tolist(),
            "lattice": L,
            "position_std": lat.std_source,
            "strain_fit_cells": {1: "3x3", 2: "5x5"}[lat.parameters["shells"]],
            "flatness": _flatness(lat),
            "scan_signature": _scan_signature(lat, img.shape),
        }
        if lat.parameters["shells"] != 1:  # the finer fit too: its std is larger
            lat1 = mm.analyze_lattice(
                found.positions,
                image=-img if contrast == "dark" else img,
                pixel_size=pixel_nm,
                position_std=found.features["position_std"].to_numpy(),
                shells=1,
            )
            entry["flatness_3x3"] = _flatness(lat1)
            entry["scan_signature_3x3"] = _scan_signature(lat1, img.shape)
        if name.startswith("stem_abf"):
            # [110]: a1 ≈ a/√2 (along [1-10]), a2 ≈ a (along [001]); SrTiO3 a = 390.5 pm
            entry["a_from_a1_pm"] = round(L["a_pm"] * np.sqrt(2), 2)
            entry["a_from_a2_pm"] = round(L["b_pm"], 2)
            entry["reference_a_pm"] = 390.5
        else:
            entry["reference_a_pm_SrTiO3"] = 390.5
            entry["ratio_to_SrTiO3"] = round((L["a_pm"] + L["b_pm"]) / 2 / 390.5, 4)
            c = mm.count_atoms(img, found.positions)
            entry["count_components"] = c.n_components
            entry["components_vs_sublattice"] = [
                np.bincount(c.counts[lat.sublattice == s], minlength=c.n_components + 1).tolist()
                for s in range(lat.n_sublattices)
            ]
        out[name] = entry
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parts", default="strain,polarisation,counting,limits,speed,real")
    args = ap.parse_args()
    parts = args.parts.split(",")
    am, an, why = _atomap()
    result = {"atomap": "atomap 0.4 (PyPI)" if am is not None else f"not available: {why}"}
    t0 = time.perf_counter()
    if "strain" in parts:
        result["strain"] = part_strain(args.seeds, am)
    if "polarisation" in parts:
        result["polarisation"] = part_polarisation(args.seeds, am, an)
    if "counting" in parts:
        result["counting"] = part_counting(args.seeds, am)
    if "auto" in parts:  # the shells="auto" adoption run: fresh seeds, no Atomap
        result["auto"] = part_strain(args.seeds, None, shells_list=(1, 2, "auto"), seed_base=5001)
    if "limits" in parts:
        result["limits"] = part_limits(args.seeds)
    if "speed" in parts:
        result["speed"] = part_speed(am)
    if "real" in parts:
        result["real"] = part_real()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
