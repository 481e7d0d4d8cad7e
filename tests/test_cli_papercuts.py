"""``microml`` papercuts from the session-15 audit: progress of a single frame, per-tool help,
``lattice`` on a par with the other subcommands, one naming scheme, no rsciio warnings."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_microml import cli
from napari_microml.lattice import cli as lattice_cli
from napari_microml.runtime.workers import progress
from napari_microml.synth.strained import strained_lattice


def _core(steps):
    """A stand-in for a core's generator twin: yields its steps, returns a result."""
    for done, total, text in steps:
        yield progress(done, total, text)
    return "result"


def test_a_single_frame_shows_what_its_core_is_doing():
    out = io.StringIO()
    line = cli.ProgressLine(["Acquisition_18.emd"], "finding atomic columns", out=out)
    seen = {}

    def run(item, device):
        seen["before"] = line.line()
        value = cli._drain(_core([(0, 1, "loading the model"), (3, 4, "frame 1/1: tile 3/4")]))
        seen["during"] = line.line()
        return value

    assert cli._reporting(run, None, "cpu", line=line, index=0) == "result"
    # before any step: what it does, not a bare 0 %
    assert "Acquisition_18.emd: finding atomic columns…" in seen["before"]
    # the bar follows the core's own step (3 of 4 tiles); "frame 1/1" is noise for one frame
    assert seen["during"].startswith("[" + "#" * 22 + " " * 8 + "]")
    assert "Acquisition_18.emd: finding atomic columns: tile 3/4 |" in seen["during"]
    assert line.line().startswith("[" + "#" * 30 + "] Acquisition_18.emd: done |")
    assert line.finished == 1
    assert cli._drain(_core([(1, 2, "outside a run")])) == "result"  # no line: no report


def test_many_items_count_frames_and_name_the_running_one():
    line = cli.ProgressLine([f"s.tif frame {i + 1}/4" for i in range(4)], "segmenting defects")
    line.item_done(0)
    line.reporter(2)(1, 2, "frame 1/1: tile 1/2")
    text = line.line()
    assert text.startswith("[" + "#" * 7 + " " * 23 + "] 1/4 |")
    assert text.endswith("| s.tif frame 3/4: segmenting defects: tile 1/2")


def test_process_items_draws_the_step_on_stderr(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(cli.sys, "stderr", err)
    drawn = threading.Event()
    real_draw = cli.ProgressLine.draw

    def draw(self):
        real_draw(self)
        if "tile 2/5" in err.getvalue():
            drawn.set()

    monkeypatch.setattr(cli.ProgressLine, "draw", draw)
    real_init = cli.ProgressLine.__init__

    def quick(self, labels, doing="", **kw):  # draw at once and often: no waiting in tests
        real_init(self, labels, doing, minimum=0.0, dt=0.02)

    monkeypatch.setattr(cli.ProgressLine, "__init__", quick)

    def run(item, device):
        cli.report_step(2, 5, "frame 1/1: tile 2/5")
        assert drawn.wait(10), err.getvalue()
        return {"x": item}

    res = cli.process_items([7], run, device="cpu", labels=["one.tif"], doing="completing the scan")
    assert res == [{"x": 7}]
    assert "one.tif: completing the scan: tile 2/5" in err.getvalue()
    assert err.getvalue().endswith("\n")


def _help(capsys, tool) -> str:
    with pytest.raises(SystemExit):
        cli.main([tool, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_is_tailored_to_each_subcommand(capsys):
    atoms, defects, complete = (_help(capsys, t) for t in ("atoms", "defects", "complete"))
    assert "atom-finder model" in atoms and "dichalcogenide" not in atoms and "kriging" not in atoms
    assert "trained 5–22 px" in atoms and "trained 5–36 px" in defects
    assert "dichalcogenide" in defects and "kriging" not in defects
    assert "atoms:" not in defects
    assert "kriging (the default" in complete and "dichalcogenide" not in complete
    lattice = _help(capsys, "lattice")
    assert "INPUT [INPUT ...] sublattices, strain, polarisation and atom counts" in lattice
    for flag in ("--keep-going", "--workers", "--overwrite", "--quiet", "--device"):
        assert flag in lattice


def test_every_result_file_is_named_after_its_tool():
    for tool, adapter in cli.ADAPTERS.items():
        assert all(s.startswith(f"_{tool}") for s in adapter.outputs), adapter.outputs
        assert adapter.outputs[-1] == f"_{tool}.provenance.json"
    assert all(s.startswith("_lattice") for s in lattice_cli.OUTPUTS)


def test_an_rgb_input_prints_no_rsciio_deprecation(tmp_path, capsys):
    from napari_microml.io.reader import read_file

    path = tmp_path / "colour.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, kwargs, _ = read_file(path)[0]
        code = cli.main(["atoms", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert data.shape == (32, 32, 3) and kwargs["rgb"]
    assert code == 2 and "RGB colour picture" in capsys.readouterr().err
    assert not [w for w in caught if "rgb_tools" in str(w.message)]


@pytest.fixture
def two_images(tmp_path):
    s = strained_lattice("flat", structure="perovskite", dose=3000, seed=21)
    good, flat = tmp_path / "pero.tif", tmp_path / "flat.tif"
    tifffile.imwrite(good, s.image)
    tifffile.imwrite(flat, np.zeros((64, 64), np.float32))
    pts = tmp_path / "pero_atoms.csv"
    pd.DataFrame({"row_px": s.positions[:, 0], "col_px": s.positions[:, 1]}).to_csv(
        pts, index=False
    )
    return good, flat, pts


def test_lattice_keep_going_writes_the_good_inputs(two_images, tmp_path, monkeypatch, capsys):
    good, flat, pts = two_images
    real = lattice_cli.analyse_file

    def known_columns(path, args):  # the columns of the good image, not the atom finder's
        if path == flat:
            raise ValueError("flat.tif shows no atomic columns")
        args.positions = str(pts)
        try:
            return real(path, args)
        finally:
            args.positions = None

    monkeypatch.setattr(lattice_cli, "analyse_file", known_columns)
    out = tmp_path / "out"
    argv = ["lattice", str(good), str(flat), "--out", str(out), "--workers", "2", "--quiet"]
    # all or nothing by default: exit 2, --out never created
    assert cli.main(argv) == 2
    assert "flat.tif" in capsys.readouterr().err and not out.exists()
    assert cli.main([*argv, "--keep-going"]) == 3
    err = capsys.readouterr().err
    assert "microml: lattice: flat.tif: error: flat.tif shows no atomic columns" in err
    assert "1 of 2 inputs gave results" in err
    assert sorted(p.name for p in out.iterdir()) == sorted("pero" + s for s in lattice_cli.OUTPUTS)
    # a rerun refuses to overwrite, naming the files, and leaves them as they were
    before = (out / "pero_lattice.json").read_bytes()
    assert cli.main([*argv, "--keep-going"]) == 2
    assert "would be overwritten" in capsys.readouterr().err
    assert (out / "pero_lattice.json").read_bytes() == before
    assert cli.main(["lattice", str(good), "--out", str(out), "--workers", "0"]) == 2
