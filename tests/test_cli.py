"""``microml`` command line: end to end on small synthetic stacks, bad input, dask clusters.

The tool cores are swapped for tiny fakes through ``cli.ADAPTERS`` so these tests do not
depend on the networks; one test runs the real atom finder when it is importable.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_microml import cli


def _fake_atoms(frame, device="auto"):
    from skimage.feature import peak_local_max

    f = np.asarray(frame, np.float32)
    pos = peak_local_max(f, min_distance=3, threshold_rel=0.5).astype(float)
    return {"positions": pos,
            "features": pd.DataFrame({"intensity": f[tuple(pos.astype(int).T)]}),
            "provenance": {"tool": "fake_atoms"}}


def _fake_defects(frame, device="auto"):
    f = np.asarray(frame)
    labels = (f > np.percentile(f, 99)).astype(np.int32)
    return {"labels": labels, "table": pd.DataFrame({"label": [1], "area": [int(labels.sum())]})}


def _fake_complete(frame, device="auto"):
    values, mask = cli.scan_mask_from_frame(frame)
    fill = values.copy()
    fill[~mask] = values[mask].mean()
    return {"image": fill, "uncertainty": (~mask).astype(np.float32)}


def _fake_spectra(item, device="auto"):
    s = np.asarray(item["spectra"], np.float32)
    return {"shift": item["axis"][s.argmax(1)].astype(np.float32), "latents": s[:, :2]}


@pytest.fixture
def fakes(monkeypatch):
    for name, fn in [("atoms", _fake_atoms), ("defects", _fake_defects),
                     ("complete", _fake_complete), ("spectra", _fake_spectra)]:
        monkeypatch.setattr(cli.ADAPTERS[name], "run", fn)


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    frames = np.stack([simulate_lattice((64, 64), seed=i).image for i in range(20)])
    path = tmp_path_factory.mktemp("in") / "stack.tif"
    tifffile.imwrite(path, frames.astype(np.float32), photometric="minisblack")
    return path


def _no_partials(out):
    return not any(p.name.startswith(".microml-partial") for p in out.iterdir())


def test_version_and_models(capsys):
    from napari_microml import __version__

    with pytest.raises(SystemExit) as ex:
        cli.main(["--version"])
    assert ex.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sha256:" in out or "No shipped models" in out
    assert cli.main([]) == 2


def test_atoms_on_stack_end_to_end(fakes, stack_file, tmp_path, capsys):
    from napari_microml.io.writer import read_points_csv
    from napari_microml.runtime.provenance import file_sha256

    out = tmp_path / "res"
    assert cli.main(["atoms", str(stack_file), "--out", str(out), "--workers", "2"]) == 0
    table = pd.read_csv(out / "stack_atoms.csv")
    assert list(table.columns[:5]) == ["frame", "row_px", "col_px", "y_pixel", "x_pixel"]
    assert "intensity" in table.columns
    assert sorted(table["frame"].unique()) == list(range(20))
    data, kw, _ = read_points_csv(out / "stack_atoms.csv")
    assert data.shape[1] == 3
    prov = json.loads((out / "stack_atoms.provenance.json").read_text())
    assert prov["input_sha256"] == file_sha256(stack_file)
    assert prov["parameters"]["frames"] == 20
    assert prov["parameters"]["tool_provenance"] == {"tool": "fake_atoms"}
    assert _no_partials(out)
    assert "stack_atoms.csv" in capsys.readouterr().out


def test_folder_and_single_images(fakes, tmp_path):
    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        tifffile.imwrite(src / f"img{i}.tif", simulate_lattice((48, 48), seed=i).image)
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert cli.main(["atoms", str(src), "--out", str(out), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} == {
        f"img{i}_atoms{s}" for i in range(2)
        for s in (".csv", ".csv.json", ".provenance.json")}
    assert "frame" not in pd.read_csv(out / "img0_atoms.csv").columns


def test_other_tools(fakes, stack_file, tmp_path, shared_data):
    import tifffile

    out = tmp_path / "o"
    assert cli.main(["defects", str(stack_file), "--out", str(out), "--quiet"]) == 0
    lab = tifffile.imread(out / "stack_defects.tif")
    assert lab.shape == (20, 64, 64) and lab.dtype == np.int32
    assert "frame" in pd.read_csv(out / "stack_defects.csv").columns

    partial = np.where(np.random.default_rng(0).random((32, 32)) < 0.3, 1.0, np.nan)
    np.save(tmp_path / "scan.npy", partial.astype(np.float32))
    assert cli.main(["complete", str(tmp_path / "scan.npy"), "--out", str(out), "--quiet"]) == 0
    img = tifffile.imread(out / "scan_completed_image.tif")
    assert img.shape == (32, 32) and np.isfinite(img).all()

    si = shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy"
    if si.exists():
        assert cli.main(["spectra", str(si), "--out", str(out), "--quiet"]) == 0
        shift = tifffile.imread(out / "CuZn_EELS_mapping_tutorial_shift.tif")
        assert shift.shape == (50, 40)
        table = pd.read_csv(out / "CuZn_EELS_mapping_tutorial_spectra.csv")
        assert len(table) == 2000 and {"row", "col", "shift_eV", "latent_1"} <= set(table.columns)
        assert table["shift_eV"].between(700, 700 + 8 * 162).all()  # the eV axis was passed


def test_distributed_scheduler(fakes, stack_file, tmp_path, monkeypatch):
    from distributed import LocalCluster

    from napari_microml.io import reader

    out, lazy = tmp_path / "d", tmp_path / "lazy"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1",
                      protocol="tcp", dashboard_address=None) as cluster:
        rc = cli.main(["atoms", str(stack_file), "--out", str(out), "--scheduler",
                       cluster.scheduler_address])
        # lazy (dask) frames: the workers load them
        monkeypatch.setattr(reader, "LAZY_BYTES", 0)
        rc_lazy = cli.main(["atoms", str(stack_file), "--out", str(lazy), "--quiet",
                            "--scheduler", cluster.scheduler_address])
        monkeypatch.undo()
        monkeypatch.setattr(cli.ADAPTERS["atoms"], "run", _fake_atoms)
    assert rc == 0 and rc_lazy == 0
    table = pd.read_csv(out / "stack_atoms.csv")
    assert sorted(table["frame"].unique()) == list(range(20))
    prov = json.loads((out / "stack_atoms.provenance.json").read_text())
    assert prov["parameters"]["scheduler"].startswith("tcp://127.0.0.1")
    pd.testing.assert_frame_equal(table, pd.read_csv(lazy / "stack_atoms.csv"))
    # same answer as the local threads scheduler
    local = tmp_path / "l"
    assert cli.main(["atoms", str(stack_file), "--out", str(local), "--quiet"]) == 0
    pd.testing.assert_frame_equal(table, pd.read_csv(local / "stack_atoms.csv"))


def _bad_cases(tmp_path, stack_file, shared_data):
    (tmp_path / "img.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "broken.dm4").write_bytes(b"\x00" * 64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    np.save(tmp_path / "four.npy", np.zeros((2, 3, 16, 16), np.float32))
    np.save(tmp_path / "tiny.npy", np.zeros((4, 4), np.float32))
    cases = [
        ([str(tmp_path / "missing.tif")], "does not exist"),
        ([str(tmp_path / "img.png")], "not supported"),
        ([str(tmp_path / "broken.dm4")], "damaged"),
        ([str(tmp_path / "empty")], "contains no readable images"),
        ([str(tmp_path / "four.npy")], "4D data"),
        ([str(tmp_path / "tiny.npy")], "too small"),
        # one good input then a bad one: still nothing written
        ([str(stack_file), str(tmp_path / "broken.dm4")], "damaged"),
    ]
    si = shared_data / "formats" / "EELS_SI.dm4"
    if si.exists():
        cases.append(([str(si)], "spectrum image"))
    return cases


def test_bad_input_clear_message_and_nothing_written(fakes, tmp_path, stack_file, shared_data,
                                                     capsys):
    for inputs, reason in _bad_cases(tmp_path, stack_file, shared_data):
        out = tmp_path / "out"
        rc = cli.main(["atoms", *inputs, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (inputs, err)
        assert len(err.splitlines()) == 1 and err.startswith("microml: error:"), err
        assert reason in err, (reason, err)
        assert not out.exists(), inputs


def test_tool_failure_leaves_nothing(monkeypatch, stack_file, tmp_path, capsys):
    def broken(frame, device="auto"):
        raise RuntimeError("network exploded\non two lines")

    monkeypatch.setattr(cli.ADAPTERS["atoms"], "run", broken)
    out = tmp_path / "keep"
    out.mkdir()
    (out / "old.txt").write_text("user file")
    rc = cli.main(["atoms", str(stack_file), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "network exploded" in err
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="console_scripts") if e.name == "microml"]
    assert eps and eps[0].value == "napari_microml.cli:main"


def test_real_atoms_on_small_stack(tmp_path):
    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    frames = np.stack([simulate_lattice((64, 64), seed=i).image for i in range(3)])
    tifffile.imwrite(tmp_path / "s.tif", frames.astype(np.float32), photometric="minisblack")
    out = tmp_path / "o"
    assert cli.main(["atoms", str(tmp_path / "s.tif"), "--out", str(out), "--device", "cpu",
                     "--quiet"]) == 0
    table = pd.read_csv(out / "s_atoms.csv")
    assert len(table) > 0 and set(table["frame"]) <= {0, 1, 2}


def test_rescale_option_reaches_the_lattice_tools(tmp_path):
    """--rescale always: a 24 px lattice (inside the trained range, so 'auto' leaves it) is
    resampled in every frame; the factor is in the provenance; other tools refuse the option."""
    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    frames = np.stack([simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=24.0,
                                        dose=500, seed=i).image for i in range(2)])
    tifffile.imwrite(tmp_path / "wide.tif", frames.astype(np.float32), photometric="minisblack")
    zooms = {}
    for mode in ("auto", "always"):
        out = tmp_path / mode
        assert cli.main(["atoms", str(tmp_path / "wide.tif"), "--out", str(out), "--device", "cpu",
                         "--rescale", mode, "--quiet"]) == 0
        prov = json.loads((out / "wide_atoms.provenance.json").read_text())
        zooms[mode] = prov["parameters"]["tool_provenance"]["parameters"]["zoom"]
        assert len(pd.read_csv(out / "wide_atoms.csv")) > 50
    assert zooms["auto"] == 1.0 and zooms["always"] == pytest.approx(14 / 24, rel=0.1)
    with pytest.raises(cli.InputError, match="no --rescale"):
        cli.run_tool("complete", [str(tmp_path / "wide.tif")], str(tmp_path / "c"), rescale="always")
    with pytest.raises(cli.InputError, match="choose one of"):
        cli.run_tool("atoms", [str(tmp_path / "wide.tif")], str(tmp_path / "c"), rescale="sometimes")
    assert not (tmp_path / "c").exists()


def test_console_script_exit_codes(tmp_path):
    import subprocess
    import sys

    code = "import sys; from napari_microml.cli import main; sys.exit(main())"
    ok = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "napari-microml" in ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "atoms", str(tmp_path / "nope.tif"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"microml: error: {tmp_path / 'nope.tif'} does not exist."
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(fakes, stack_file, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    assert cli.main(["atoms", str(stack_file), "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep"


def test_sigterm_leaves_nothing(stack_file, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "slow.py"
    started = tmp_path / "started"
    script.write_text(
        "import pathlib, sys, time\n"
        "from napari_microml import cli\n"
        "def slow(frame, device='auto'):\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(0.5)\n"
        "    return {'positions': [[1.0, 1.0]], 'features': None}\n"
        "cli.ADAPTERS['atoms'].run = slow\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, str(script), "atoms", str(stack_file), "--out",
                             str(out), "--workers", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.1)  # wait until frames are being processed (imports done, temporary folder made)
    assert out.exists() and any(out.iterdir()), "the run should have made its temporary folder"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not out.exists() or not any(out.iterdir())


def test_folder_skips_unsuitable_datasets_with_a_note(fakes, shared_data, tmp_path, capsys):
    folder = shared_data / "dkl"  # HAADF image + EELS spectrum image + a BEPS .h5 (not ours)
    if not (folder / "CuZn_HAADF.hspy").exists():
        pytest.skip(f"{folder / 'CuZn_HAADF.hspy'} is not present")
    out = tmp_path / "o"
    assert cli.main(["atoms", str(folder), "--out", str(out), "--quiet"]) == 0
    assert (out / "CuZn_HAADF_atoms.csv").exists()
    assert not any("EELS" in p.name for p in out.iterdir())
    assert "skipped CuZn_EELS_mapping_tutorial.hspy is a spectrum image" in capsys.readouterr().err
    # the same spectrum image named explicitly is an error
    assert cli.main(["atoms", str(folder / "CuZn_EELS_mapping_tutorial.hspy"), "--out",
                     str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


def test_model_option_selects_the_method_and_rejects_unknown_names(tmp_path, capsys):
    import json

    import tifffile

    from napari_microml.completion.masks import scan_mask
    from napari_microml.synth.scenes import simulate_scene

    truth = simulate_scene((48, 48), kind="edges", dose=np.inf, seed=2)[0]
    mask = scan_mask("grid", truth.shape, 1 / 6, seed=0)
    tifffile.imwrite(tmp_path / "scan.tif", np.where(mask, truth, np.nan).astype(np.float32))
    bad = tmp_path / "bad"
    assert cli.main(["complete", str(tmp_path / "scan.tif"), "--out", str(bad), "--model", "nope",
                     "--quiet"]) == 2
    assert "local-gp" in capsys.readouterr().err and not bad.exists()
    out = tmp_path / "o"
    assert cli.main(["complete", str(tmp_path / "scan.tif"), "--out", str(out), "--model", "local-gp",
                     "--quiet"]) == 0
    filled = [p for p in out.iterdir() if "completed" in p.name and p.suffix == ".tif"]
    assert filled
    img = tifffile.imread(filled[0])
    np.testing.assert_allclose(img.reshape(truth.shape)[mask], truth[mask], rtol=1e-6)
    prov = json.dumps([json.loads(p.read_text()) for p in out.glob("*.json")])
    assert "local-gp" in prov


def test_defects_model_defaults_to_auto_which_picks_the_dichalcogenide_model(tmp_path):
    """A WS2-like frame through the real segmenter: 'auto' is the default --model and chose the
    dichalcogenide network; --model default overrides it; 'auto' is only a defects choice."""
    import tifffile

    from napari_microml.synth.defects import simulate_defects

    assert cli.model_choices("defects")[0] == "auto" and "auto" not in cli.model_choices("atoms")
    s = simulate_defects((128, 128), seed=5_700_004, dose=500, scene="crystal", lattice="dichalcogenide",
                         spacing=11, contrast="bright")
    tifffile.imwrite(tmp_path / "ws2.tif", s.image.astype(np.float32))
    for args, expected in (([], "defects-dichalcogenide"), (["--model", "default"], "defects-default")):
        out = tmp_path / (expected + "_out")
        assert cli.main(["defects", str(tmp_path / "ws2.tif"), "--out", str(out), "--quiet", *args]) == 0
        prov = json.loads((out / "ws2_defects.provenance.json").read_text())["parameters"]["tool_provenance"]
        assert prov["model"]["name"] == expected
        assert (prov["parameters"]["model"] == "auto") == (not args)
