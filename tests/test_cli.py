"""``microml`` command line: end to end on small synthetic stacks, bad input, dask clusters.

The tool cores are swapped for tiny fakes through ``cli.ADAPTERS`` so these tests do not
depend on the networks; one test runs the real atom finder when it is importable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_microml import cli


def _fake_atoms(frame, device="auto"):
    from skimage.feature import peak_local_max

    f = np.asarray(frame, np.float32)
    pos = peak_local_max(f, min_distance=3, threshold_rel=0.5).astype(float)
    return {
        "positions": pos,
        "features": pd.DataFrame({"intensity": f[tuple(pos.astype(int).T)]}),
        "provenance": {"tool": "fake_atoms"},
    }


def _fake_defects(frame, device="auto"):
    f = np.asarray(frame)
    labels = (f > np.percentile(f, 99)).astype(np.int32)
    return {"labels": labels, "table": pd.DataFrame({"label": [1], "area": [int(labels.sum())]})}


def _fake_complete(item, device="auto"):
    values, mask = np.asarray(item["values"], np.float32), np.asarray(item["mask"], bool)
    fill = np.where(mask, values, values[mask].mean())
    return {"image": fill, "uncertainty": (~mask).astype(np.float32)}


def _fake_spectra(item, device="auto"):
    s = np.asarray(item["spectra"], np.float32)
    axis = np.arange(s.shape[1]) if item["axis"] is None else item["axis"]
    return {"shift": axis[s.argmax(1)].astype(np.float32), "latents": s[:, :2]}


@pytest.fixture
def fakes(monkeypatch):
    for name, fn in [
        ("atoms", _fake_atoms),
        ("defects", _fake_defects),
        ("complete", _fake_complete),
        ("spectra", _fake_spectra),
    ]:
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
    assert "atoms-default\tatoms\tshipped" in out and "sha256:" in out
    assert "NAPARI_MICROML_MODELS" in out  # where the user's own models are
    assert cli.main([]) == 2


def test_atoms_on_stack_end_to_end(fakes, stack_file, tmp_path, capsys):
    from napari_microml.io.writer import read_points_csv
    from napari_microml.runtime.provenance import file_sha256

    out = tmp_path / "res"
    assert cli.main(["atoms", str(stack_file), "--out", str(out), "--workers", "2"]) == 0
    table = pd.read_csv(out / "stack_atoms.csv")
    assert list(table.columns[:4]) == ["frame", "row_px", "col_px", "intensity"]  # no y_pixel
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
        f"img{i}_atoms{s}" for i in range(2) for s in (".csv", ".csv.json", ".provenance.json")
    }
    assert "frame" not in pd.read_csv(out / "img0_atoms.csv").columns


def test_other_tools(fakes, stack_file, tmp_path, shared_data):
    import tifffile

    out = tmp_path / "o"
    assert cli.main(["defects", str(stack_file), "--out", str(out), "--quiet"]) == 0
    lab = tifffile.imread(out / "stack_defects.tif")
    assert lab.shape == (20, 64, 64) and lab.dtype == np.int32
    assert "frame" in pd.read_csv(out / "stack_defects.csv", comment="#").columns

    partial = np.where(np.random.default_rng(0).random((32, 32)) < 0.3, 1.0, np.nan)
    np.save(tmp_path / "scan.npy", partial.astype(np.float32))
    assert cli.main(["complete", str(tmp_path / "scan.npy"), "--out", str(out), "--quiet"]) == 0
    img = tifffile.imread(out / "scan_complete_image.tif")
    assert img.shape == (32, 32) and np.isfinite(img).all()

    si = shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy"
    if si.exists():
        assert cli.main(["spectra", str(si), "--out", str(out), "--quiet"]) == 0
        shift = tifffile.imread(out / "CuZn_EELS_mapping_tutorial_spectra_shift.tif")
        assert shift.shape == (50, 40)
        table = pd.read_csv(out / "CuZn_EELS_mapping_tutorial_spectra.csv")
        assert len(table) == 2000 and {"row", "col", "shift_eV", "latent_1"} <= set(table.columns)
        assert table["shift_eV"].between(700, 700 + 8 * 162).all()  # the eV axis was passed


def test_distributed_scheduler(fakes, stack_file, tmp_path, monkeypatch):
    from distributed import LocalCluster

    from napari_microml.io import reader

    out, lazy = tmp_path / "d", tmp_path / "lazy"
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        host="127.0.0.1",
        protocol="tcp",
        dashboard_address=None,
    ) as cluster:
        rc = cli.main(
            ["atoms", str(stack_file), "--out", str(out), "--scheduler", cluster.scheduler_address]
        )
        # lazy (dask) frames: the workers load them
        monkeypatch.setattr(reader, "LAZY_BYTES", 0)
        rc_lazy = cli.main(
            [
                "atoms",
                str(stack_file),
                "--out",
                str(lazy),
                "--quiet",
                "--scheduler",
                cluster.scheduler_address,
            ]
        )
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


def test_bad_input_clear_message_and_nothing_written(
    fakes, tmp_path, stack_file, shared_data, capsys
):
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
    assert (
        cli.main(
            ["atoms", str(tmp_path / "s.tif"), "--out", str(out), "--device", "cpu", "--quiet"]
        )
        == 0
    )
    table = pd.read_csv(out / "s_atoms.csv")
    assert len(table) > 0 and set(table["frame"]) <= {0, 1, 2}


def test_rescale_option_reaches_the_lattice_tools(tmp_path):
    """--rescale always: an 18 px lattice (inside the trained range, so 'auto' leaves it) is
    resampled in every frame; the factor is in the provenance; other tools refuse the option."""
    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    frames = np.stack(
        [
            simulate_lattice(
                (192, 192), scene="crystal", lattice="square", spacing=18.0, dose=500, seed=i
            ).image
            for i in range(2)
        ]
    )
    tifffile.imwrite(tmp_path / "wide.tif", frames.astype(np.float32), photometric="minisblack")
    zooms = {}
    for mode in ("auto", "always"):
        out = tmp_path / mode
        assert (
            cli.main(
                [
                    "atoms",
                    str(tmp_path / "wide.tif"),
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--rescale",
                    mode,
                    "--quiet",
                ]
            )
            == 0
        )
        prov = json.loads((out / "wide_atoms.provenance.json").read_text())
        zooms[mode] = prov["parameters"]["tool_provenance"]["parameters"]["zoom"]
        assert len(pd.read_csv(out / "wide_atoms.csv")) > 50
    assert zooms["auto"] == 1.0 and zooms["always"] == pytest.approx(14 / 18, rel=0.1)
    with pytest.raises(cli.InputError, match="no --rescale"):
        cli.run_tool(
            "complete", [str(tmp_path / "wide.tif")], str(tmp_path / "c"), rescale="always"
        )
    with pytest.raises(cli.InputError, match="choose one of"):
        cli.run_tool(
            "atoms", [str(tmp_path / "wide.tif")], str(tmp_path / "c"), rescale="sometimes"
        )
    assert not (tmp_path / "c").exists()


def test_console_script_exit_codes(tmp_path):
    import subprocess
    import sys

    code = "import sys; from napari_microml.cli import main; sys.exit(main())"
    ok = subprocess.run(
        [sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "napari-microml" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "atoms",
            str(tmp_path / "nope.tif"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
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
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "atoms",
            str(stack_file),
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(
            0.1
        )  # wait until frames are being processed (imports done, temporary folder made)
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
    assert (
        cli.main(
            [
                "atoms",
                str(folder / "CuZn_EELS_mapping_tutorial.hspy"),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
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
    assert (
        cli.main(
            [
                "complete",
                str(tmp_path / "scan.tif"),
                "--out",
                str(bad),
                "--model",
                "nope",
                "--quiet",
            ]
        )
        == 2
    )
    assert "local-gp" in capsys.readouterr().err and not bad.exists()
    out = tmp_path / "o"
    assert (
        cli.main(
            [
                "complete",
                str(tmp_path / "scan.tif"),
                "--out",
                str(out),
                "--model",
                "local-gp",
                "--quiet",
            ]
        )
        == 0
    )
    filled = [p for p in out.iterdir() if "_complete_image" in p.name and p.suffix == ".tif"]
    assert filled
    img = tifffile.imread(filled[0])
    np.testing.assert_allclose(img.reshape(truth.shape)[mask], truth[mask], rtol=1e-6)
    prov = json.dumps([json.loads(p.read_text()) for p in out.glob("*.json")])
    assert "local-gp" in prov
    # no --model: complete_scan's own default method (kriging), not a network the CLI picked
    from napari_microml.completion.complete import KRIGING

    assert cli.model_choices("complete")[:2] == [KRIGING, "local-gp"]
    assert (
        cli.main(["complete", str(tmp_path / "scan.tif"), "--out", str(tmp_path / "d"), "--quiet"])
        == 0
    )
    prov = json.loads((tmp_path / "d" / "scan_complete.provenance.json").read_text())["parameters"]
    assert prov["model"] is None and prov["tool_provenance"]["model"]["name"] == KRIGING


def test_defects_model_defaults_to_auto_which_picks_the_dichalcogenide_model(tmp_path):
    """A WS2-like frame through the real segmenter: 'auto' is the default --model and chose the
    dichalcogenide network; --model default overrides it."""
    import tifffile

    from napari_microml.synth.defects import simulate_defects

    assert cli.model_choices("defects")[0] == "auto"
    s = simulate_defects(
        (128, 128),
        seed=5_700_004,
        dose=500,
        scene="crystal",
        lattice="dichalcogenide",
        spacing=11,
        contrast="bright",
    )
    tifffile.imwrite(tmp_path / "ws2.tif", s.image.astype(np.float32))
    for args, expected in (
        ([], "defects-dichalcogenide"),
        (["--model", "default"], "defects-default"),
    ):
        out = tmp_path / (expected + "_out")
        assert (
            cli.main(["defects", str(tmp_path / "ws2.tif"), "--out", str(out), "--quiet", *args])
            == 0
        )
        prov = json.loads((out / "ws2_defects.provenance.json").read_text())["parameters"][
            "tool_provenance"
        ]
        assert prov["model"]["name"] == expected
        assert (prov["parameters"]["model"] == "auto") == (not args)


# ------------------------------------------------------------------ nothing lost (issue #27)
def _tree(folder):
    """{relative path: bytes} of every file under ``folder`` (folders as None)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def calls(monkeypatch):
    """The fake atom finder, counting its calls (to show refused runs do no work)."""
    seen = []

    def counted(frame, device="auto", **kw):
        seen.append(kw)
        return _fake_atoms(frame, device)

    monkeypatch.setattr(cli.ADAPTERS["atoms"], "run", counted)
    return seen


def test_existing_results_are_never_overwritten_without_the_flag(
    fakes, calls, stack_file, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stack_atoms.csv").write_text("keep\n")
    (out / "stack_atoms.provenance.json").write_text("{}")
    before = _tree(out)
    assert cli.main(["atoms", str(stack_file), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "2 files" in err and "stack_atoms.csv" in err and "stack_atoms.provenance.json" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert _tree(out) == before and calls == []  # refused before any frame ran
    assert cli.main(["atoms", str(stack_file), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert pd.read_csv(out / "stack_atoms.csv")["frame"].nunique() == 20
    assert _no_partials(out)


def _twenty_inputs(tmp_path):
    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    src = tmp_path / "in"
    src.mkdir()
    for i in range(20):
        tifffile.imwrite(
            src / f"pt_{i}.tif", simulate_lattice((32, 32), seed=i).image.astype(np.float32)
        )
    return src


def test_a_result_name_taken_by_a_folder_is_refused_before_any_work(fakes, calls, tmp_path, capsys):
    src = _twenty_inputs(tmp_path)
    out = tmp_path / "out"
    (out / "pt_10_atoms.csv").mkdir(parents=True)
    for flags in ([], ["--overwrite"]):
        assert cli.main(["atoms", str(src), "--out", str(out), "--quiet", *flags]) == 2
        assert "pt_10_atoms.csv" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == ["pt_10_atoms.csv"] and calls == []


def test_a_failed_rename_rolls_the_whole_commit_back(fakes, tmp_path, monkeypatch, capsys):
    """The 7th of 60 renames fails (as a full disk or a name taken meanwhile would): every file
    of the run is gone from out and the results --overwrite was replacing are back."""
    src = _twenty_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("user file")
    for i in (0, 1, 2):
        (out / f"pt_{i}_atoms.csv").write_text(f"earlier result {i}")
    before = _tree(out)
    moves = []

    def flaky(src_path, dst_path):
        moves.append(dst_path)
        if len(moves) == 7:
            raise OSError(28, "No space left on device")
        return os.replace(src_path, dst_path)

    monkeypatch.setattr(cli, "_rename", flaky)
    rc = cli.main(["atoms", str(src), "--out", str(out), "--quiet", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left" in err and "nothing was written" in err
    assert len(moves) == 7
    assert _tree(out) == before


_SLOW_SCRIPT = """\
import os, pathlib, signal, sys, time
import pandas
from napari_microml import cli
started = pathlib.Path({started!r})
def slow(frame, device='auto'):
    started.touch()
    time.sleep({sleep})
    return {{'positions': [[1.0, 1.0]], 'features': pandas.DataFrame({{'score': [0.9]}})}}
cli.ADAPTERS['atoms'].run = slow
moves = []
def kill_mid_commit(a, b):
    if len(moves) == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)
    moves.append(b)
    os.replace(a, b)
cli._rename = kill_mid_commit
sys.exit(cli.main(sys.argv[1:]))
"""


def _start_slow(tmp_path, args, *, sleep=0.5, kill_after=-1):
    import subprocess
    import sys

    started = tmp_path / "started"
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_SCRIPT.format(started=str(started), sleep=sleep, kill_after=kill_after))
    proc = subprocess.Popen([sys.executable, str(script), *args], stderr=subprocess.PIPE, text=True)
    return proc, started


def test_sigkill_mid_run_then_rerun_loses_nothing_and_leaves_nothing_stale(
    fakes, stack_file, tmp_path
):
    import signal
    import time

    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("user file")
    (out / "stack_atoms.csv").write_text("earlier result")
    before = _tree(out)
    proc, started = _start_slow(
        tmp_path, ["atoms", str(stack_file), "--out", str(out), "--workers", "1", "--overwrite"]
    )
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert [p for p in out.iterdir() if p.name.startswith(".microml-partial")], "no staging folder"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    stale = [p for p in out.iterdir() if p.name.startswith(".microml-partial")]
    assert stale and {k: v for k, v in _tree(out).items() if not k.startswith(".microml")} == before
    # the rerun removes the killed run's folder and writes everything
    assert cli.main(["atoms", str(stack_file), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert _no_partials(out)
    assert (out / "notes.txt").read_text() == "user file"
    assert pd.read_csv(out / "stack_atoms.csv")["frame"].nunique() == 20


def test_sigkill_half_way_through_the_commit_is_rolled_back_by_the_next_run(
    fakes, tmp_path, capsys
):
    """Killed after 4 of 9 renames with --overwrite: the user's earlier results sit in the staging
    folder's old/; the next run puts them back before it looks for files it would overwrite."""
    src = _twenty_inputs(tmp_path)
    for p in sorted(src.iterdir())[3:]:
        p.unlink()  # 3 inputs → 9 result files
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("user file")
    for name in ("pt_0_atoms.csv", "pt_1_atoms.csv", "pt_1_atoms.csv.json"):
        (out / name).write_text(f"earlier {name}")
    before = _tree(out)
    proc, _ = _start_slow(
        tmp_path,
        ["atoms", str(src), "--out", str(out), "--overwrite", "--quiet"],
        sleep=0,
        kill_after=4,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -9, err
    assert _tree(out) != before  # half committed
    # a rerun without --overwrite: rolls back, then refuses (the earlier results exist again)
    assert cli.main(["atoms", str(src), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "interrupted run" in err and "would be overwritten" in err
    assert _tree(out) == before


def test_keep_going_writes_the_good_inputs_and_names_the_bad(
    fakes, stack_file, tmp_path, monkeypatch, capsys
):
    import tifffile

    (tmp_path / "broken.dm4").write_bytes(b"\x00" * 64)
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((32, 32), 7, np.float32))

    def picky(frame, device="auto"):
        if np.ptp(np.asarray(frame)) == 0:
            raise ValueError("The image is constant: there are no columns to find.")
        return _fake_atoms(frame, device)

    monkeypatch.setattr(cli.ADAPTERS["atoms"], "run", picky)
    inputs = [str(stack_file), str(flat), str(tmp_path / "broken.dm4")]
    out = tmp_path / "o"
    # without --keep-going: the input the tool refuses is bad input (2, not 1), nothing written
    assert cli.main(["atoms", str(stack_file), str(flat), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "flat.tif: The image is constant" in err and not out.exists()
    assert cli.main(["atoms", *inputs, "--out", str(out), "--quiet", "--keep-going"]) == 3
    err = capsys.readouterr().err
    assert "flat.tif" in err and "constant" in err and "broken.dm4" in err and "damaged" in err
    assert "1 of 3 inputs gave results" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "stack_atoms.csv",
        "stack_atoms.csv.json",
        "stack_atoms.provenance.json",
    ]
    # every input bad: still exit 2, nothing written
    assert (
        cli.main(["atoms", str(flat), "--out", str(tmp_path / "o2"), "--quiet", "--keep-going"])
        == 2
    )
    assert not (tmp_path / "o2").exists()


def test_outputs_are_never_read_back_as_inputs(fakes, tmp_path, capsys):
    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    folder = tmp_path / "data"
    folder.mkdir()
    tifffile.imwrite(
        folder / "img.tif", simulate_lattice((48, 48), seed=0).image.astype(np.float32)
    )
    scan = np.where(np.random.default_rng(0).random((32, 32)) < 0.3, 1.0, np.nan).astype(np.float32)
    tifffile.imwrite(folder / "scan.tif", scan)
    for _ in range(2):  # --out is the input folder itself, then the same again
        assert (
            cli.main(
                ["defects", str(folder / "img.tif"), "--out", str(folder), "--quiet", "--overwrite"]
            )
            == 0
        )
        assert (
            cli.main(
                [
                    "complete",
                    str(folder / "scan.tif"),
                    "--out",
                    str(folder),
                    "--quiet",
                    "--overwrite",
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert cli.main(["defects", str(folder), "--out", str(folder), "--quiet", "--overwrite"]) == 0
    err = capsys.readouterr().err
    for name in ("img_defects.tif", "scan_complete_image.tif", "scan_complete_uncertainty.tif"):
        assert f"skipped {name}: written by microml" in err
    names = sorted(p.name for p in folder.iterdir())
    assert not [
        n for n in names if "_defects_" in n or "_complete_image_" in n or "uncertainty_" in n
    ]
    assert "img_defects.csv" in names and "scan_defects.csv" in names
    # named explicitly, a result is an input (e.g. segment a completed scan)
    assert (
        cli.main(
            [
                "defects",
                str(folder / "scan_complete_image.tif"),
                "--out",
                str(tmp_path / "e"),
                "--quiet",
            ]
        )
        == 0
    )


def test_complete_never_guesses_the_mask_from_zeros(fakes, tmp_path, capsys):
    import tifffile

    rng = np.random.default_rng(1)
    counts = rng.poisson(0.7, (48, 48)).astype(np.float32)  # fully measured, about half zeros
    assert 0.4 < (counts == 0).mean() < 0.6
    tifffile.imwrite(tmp_path / "counts.tif", counts)
    out = tmp_path / "o"
    assert cli.main(["complete", str(tmp_path / "counts.tif"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no NaN pixel" in err and "--mask" in err and "--zeros-unmeasured" in err
    assert not out.exists()
    # a mask file says which pixels were measured: zeros inside it are kept as measured zeros
    mask = rng.random((48, 48)) < 0.4
    tifffile.imwrite(tmp_path / "mask.tif", mask.astype(np.uint8))
    assert (
        cli.main(
            [
                "complete",
                str(tmp_path / "counts.tif"),
                "--mask",
                str(tmp_path / "mask.tif"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    img = tifffile.imread(out / "counts_complete_image.tif")
    np.testing.assert_array_equal(img[mask], counts[mask])
    assert (img[mask] == 0).sum() == (counts[mask] == 0).sum() > 100
    np.testing.assert_array_equal(
        tifffile.imread(out / "counts_complete_uncertainty.tif") > 0, ~mask
    )
    prov = json.loads((out / "counts_complete.provenance.json").read_text())["parameters"]
    assert prov["measured_pixels"] == "mask file mask.tif"
    # scan positions (x, y per line) mark the measured pixels of the image
    pos = np.argwhere(mask)[:300]
    (tmp_path / "pos.csv").write_text("x,y\n" + "\n".join(f"{c},{r}" for r, c in pos))
    out2 = tmp_path / "o2"
    assert (
        cli.main(
            [
                "complete",
                str(tmp_path / "counts.tif"),
                "--coords",
                str(tmp_path / "pos.csv"),
                "--out",
                str(out2),
                "--quiet",
            ]
        )
        == 0
    )
    unc = tifffile.imread(out2 / "counts_complete_uncertainty.tif")
    assert (unc == 0).sum() == 300 and (unc[tuple(pos.T)] == 0).all()
    # the user may say so explicitly
    assert (
        cli.main(
            [
                "complete",
                str(tmp_path / "counts.tif"),
                "--zeros-unmeasured",
                "--out",
                str(tmp_path / "o3"),
                "--quiet",
            ]
        )
        == 0
    )
    # a mask that does not fit
    tifffile.imwrite(tmp_path / "small.tif", np.ones((8, 8), np.uint8))
    assert (
        cli.main(
            [
                "complete",
                str(tmp_path / "counts.tif"),
                "--mask",
                str(tmp_path / "small.tif"),
                "--out",
                str(tmp_path / "o4"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "must match the scan" in capsys.readouterr().err


def test_complete_real_local_gp_on_a_fully_measured_image_refuses(tmp_path, capsys):
    """Even when told every pixel was measured, nothing is 'filled' (real completer, exit 2)."""
    import tifffile

    counts = np.random.default_rng(2).poisson(0.7, (32, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "counts.tif", counts)
    tifffile.imwrite(tmp_path / "all.tif", np.ones((32, 32), np.uint8))
    out = tmp_path / "o"
    assert (
        cli.main(
            [
                "complete",
                str(tmp_path / "counts.tif"),
                "--mask",
                str(tmp_path / "all.tif"),
                "--model",
                "local-gp",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "Every pixel is measured" in capsys.readouterr().err and not out.exists()


def test_spectra_refuses_input_without_a_spectral_axis(fakes, tmp_path, capsys):
    import tifffile

    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "pt.tif", img)
    out = tmp_path / "o"
    assert cli.main(["spectra", str(tmp_path / "pt.tif"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no spectral axis" in err and "--channels-last" in err and not out.exists()
    np.save(tmp_path / "spectra.npy", img)
    assert (
        cli.main(
            [
                "spectra",
                str(tmp_path / "spectra.npy"),
                "--channels-last",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "shift_channels" in pd.read_csv(out / "spectra_spectra.csv").columns


def test_atoms_contrast_option_and_an_empty_result(
    fakes, calls, stack_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "o"
    assert (
        cli.main(["atoms", str(stack_file), "--out", str(out), "--quiet", "--contrast", "dark"])
        == 0
    )
    assert calls[0] == {"contrast": "dark"}
    prov = json.loads((out / "stack_atoms.provenance.json").read_text())["parameters"]
    assert prov["contrast"] == "dark"
    assert cli.main(["atoms", str(stack_file), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert calls[-1] == {}  # auto: find_atoms decides
    with pytest.raises(SystemExit) as usage:  # argparse: usage errors exit 2 too
        cli.main(["defects", str(stack_file), "--out", str(tmp_path / "d"), "--contrast", "dark"])
    assert usage.value.code == 2
    capsys.readouterr()

    def nothing(frame, device="auto"):
        return {
            "positions": np.zeros((0, 2)),
            "features": pd.DataFrame(),
            "provenance": {"parameters": {"contrast": "bright"}},
        }

    monkeypatch.setattr(cli.ADAPTERS["atoms"], "run", nothing)
    empty = tmp_path / "empty"
    assert cli.main(["atoms", str(stack_file), "--out", str(empty), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert (
        "stack.tif: no atomic columns found (contrast bright)" in err and "--contrast dark" in err
    )
    assert not empty.exists()  # no empty CSV


def test_exit_codes_are_stated_identically_in_help_and_docstring(capsys):
    for code in ("0 ", "1 ", "2 ", "3 ", "130 "):
        assert f"    {code}" in cli.EXIT_CODES
    assert cli.EXIT_CODES.replace("Exit codes\n", "") in cli.__doc__
    for argv in (["--help"], ["atoms", "--help"], ["complete", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert cli.EXIT_CODES in capsys.readouterr().out


def test_provenance_for_every_command(fakes, stack_file, tmp_path):
    import tifffile

    partial = np.where(np.random.default_rng(0).random((32, 32)) < 0.3, 1.0, np.nan).astype(
        np.float32
    )
    tifffile.imwrite(tmp_path / "scan.tif", partial)
    np.save(tmp_path / "sp.npy", np.random.default_rng(0).random((6, 32)).astype(np.float32))
    runs = {
        "atoms": [str(stack_file)],
        "defects": [str(stack_file)],
        "complete": [str(tmp_path / "scan.tif")],
        "spectra": [str(tmp_path / "sp.npy"), "--channels-last"],
    }
    from napari_microml import __version__

    for tool, args in runs.items():
        out = tmp_path / tool
        assert cli.main([tool, *args, "--out", str(out), "--quiet"]) == 0, tool
        sidecar = next(out.glob("*.provenance.json"))
        prov = json.loads(sidecar.read_text())
        assert prov["tool"] == f"cli.{tool}" and prov["version"] == __version__
        assert prov["parameters"]["command"][:2] == ["microml", tool]
        assert prov["input_sha256"]
    header = (tmp_path / "defects" / "stack_defects.csv").read_text().splitlines()
    assert header[0] == "# napari-microml defect table" and header[1] == "# image: stack.tif"
    line = next(h for h in header if h.startswith("# provenance: "))
    assert json.loads(line[14:])["napari_microml"]["tool"] == "cli.defects"
    desc = json.loads(
        tifffile.TiffFile(tmp_path / "complete" / "scan_complete_image.tif").pages[0].description
    )
    assert desc["napari_microml"]["tool"] == "cli.complete"


@pytest.mark.parametrize("delay", [0.2, 0.5, 1.0, 2.5])
def test_ctrl_c_at_any_moment_gives_no_traceback(tmp_path, delay):
    """SIGINT while the console script imports numpy/torch or runs: one line, exit 130.

    Bytecode caching is on (as in any installed environment) so the first 0.2 s is not spent
    compiling cli.py before its first line, which installs the quiet handler, can run; the
    interpreter's own start (about 30 ms) precedes any package code."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import tifffile

    from napari_microml.synth.lattice import simulate_lattice

    exe = shutil.which("microml", path=str(Path(sys.executable).parent))
    assert exe, "the microml console script is not installed next to this python"
    frames = np.stack([simulate_lattice((128, 128), seed=i).image for i in range(8)])
    tifffile.imwrite(tmp_path / "s.tif", frames.astype(np.float32), photometric="minisblack")
    out = tmp_path / "o"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([exe, "--version"], env=env, capture_output=True, timeout=120)  # caches bytecode
    proc = subprocess.Popen(
        [
            exe,
            "atoms",
            str(tmp_path / "s.tif"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "1",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    if proc.returncode == 0:  # finished before the signal
        return
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("microml:") and "interrupted" in err
    assert not out.exists() or not any(out.iterdir())


SCRIPT_FINALIZER = """
import os, signal, sys, time, weakref
from napari_microml import cli
cli._CONSOLE = {console}
cli._install_handlers()
class Thing:
    pass
t = Thing()
weakref.finalize(t, lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.01)))
try:
    del t  # the finalizer runs here and the Ctrl-C lands inside it
    for _ in range(300):
        time.sleep(0.01)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted in the run's own code")
"""


@pytest.mark.parametrize("console", [True, False])
def test_a_ctrl_c_inside_a_finalizer_is_delivered_again(console):
    """A SIGINT that lands in a finalizer raised KeyboardInterrupt there: Python printed it as an
    ignored traceback and the run went on (seen in CI at 2.5 s). The console script's unraisable
    hook sends it again a moment later, so the run is interrupted, silently; elsewhere (tests,
    notebooks) the hook is left alone, which is what the second case shows."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", SCRIPT_FINALIZER.format(console=console)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if console:
        assert run.stdout.strip() == "interrupted in the run's own code", run.stderr
        assert "Traceback" not in run.stderr, run.stderr
    else:
        assert run.stdout.strip() == "not interrupted" and "KeyboardInterrupt" in run.stderr


def test_spectra_window_is_given_in_the_axis_units(
    fakes, shared_data, tmp_path, monkeypatch, capsys
):
    si = shared_data / "spectra" / "LSMO_linescan_low_loss.hspy"  # 0.5 eV/channel from -50 eV
    if not si.exists():
        pytest.skip(f"{si} is not present")
    seen = []

    def record(item, device="auto"):
        seen.append(item["channel_range"])
        return _fake_spectra(item, device)

    monkeypatch.setattr(cli.ADAPTERS["spectra"], "run", record)
    out = tmp_path / "o"
    assert cli.main(["spectra", str(si), "--window", "-5", "10", "--out", str(out), "--quiet"]) == 0
    assert seen == [(90, 121)]  # -5 eV is channel 90, 10 eV channel 120
    assert (
        cli.main(
            [
                "spectra",
                str(si),
                "--window",
                "2000",
                "2100",
                "--out",
                str(tmp_path / "x"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "covers 0 channel(s)" in err and "-50 to 461.5 eV" in err
    with pytest.raises(cli.InputError, match="--window"):
        cli.run_tool("atoms", [str(si)], str(tmp_path / "a"), window=(0, 1))


def test_a_folder_that_appears_during_the_run_rolls_the_commit_back(tmp_path, monkeypatch, capsys):
    """The issue's case, raced: pt_10_atoms.csv becomes a folder while frames run (after the
    up-front check). The commit fails on it and nothing of the 20-input run stays in out."""
    src = _twenty_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("user file")

    def blocking(frame, device="auto"):
        (out / "pt_10_atoms.csv").mkdir(exist_ok=True)
        return _fake_atoms(frame, device)

    monkeypatch.setattr(cli.ADAPTERS["atoms"], "run", blocking)
    assert cli.main(["atoms", str(src), "--out", str(out), "--quiet"]) == 1
    assert "pt_10_atoms.csv" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pt_10_atoms.csv"]
    assert (out / "notes.txt").read_text() == "user file"
