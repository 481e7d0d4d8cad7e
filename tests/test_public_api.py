"""One contract for the public API (issue #23): explicit signatures and provenance on every result.

Every name in ``napari_microml._API`` shows its parameters to ``help()``, IDEs and napari (no
``**kwargs``), and every tool's result records which tool and version made it. Tiny synthetic
inputs keep the file fast.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import napari_microml as mm

pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


def _callables():
    """Every public function of the API, and the constructor and public methods of its classes."""
    for name in mm._API:
        obj = getattr(mm, name)
        if inspect.isclass(obj):
            yield f"{name}.__init__", obj.__init__
            for attr, member in inspect.getmembers(obj, inspect.isfunction):
                if not attr.startswith("_"):
                    yield f"{name}.{attr}", member
        else:
            yield name, obj
            twin = getattr(inspect.getmodule(obj), f"{name}_iter", None)
            if twin is not None:  # the generator twin the widgets drive
                yield f"{name}_iter", twin


CALLABLES = dict(_callables())


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_no_hidden_keyword_arguments(name):
    params = inspect.signature(CALLABLES[name]).parameters.values()
    hidden = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    assert not hidden, f"{name} hides its parameters behind **{hidden[0]}"


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "find_atoms",
            [
                "model",
                "threshold",
                "refine",
                "device",
                "pixel_size",
                "contrast",
                "min_distance",
                "tile",
                "rescale",
                "input_name",
            ],
        ),
        (
            "segment_defects",
            [
                "model",
                "threshold",
                "pixel_size",
                "atoms",
                "contrast",
                "device",
                "tile",
                "min_area",
                "tta",
                "column_check",
                "lattice_check",
                "rescale",
                "input_name",
            ],
        ),
        (
            "fit_shift_vae",
            [
                "axis",
                "latent_dim",
                "epochs",
                "shift_prior",
                "model",
                "normalize",
                "channel_range",
                "despike",
                "seed",
                "device",
                "batch_size",
                "learning_rate",
                "noise_scale",
                "warmup",
                "hidden",
            ],
        ),
        (
            "run_campaign",
            [
                "budget",
                "n_initial",
                "acquisition",
                "batch_size",
                "seed",
                "scalarizer",
                "callback",
                "learner",
                "patch_size",
                "maximize",
                "features",
                "n_models",
                "init_iters",
                "warm_iters",
                "lr",
            ],
        ),
    ],
)
def test_help_lists_every_parameter(name, expected):
    func = getattr(mm, name)
    params = inspect.signature(func).parameters
    doc = inspect.getdoc(func)
    for p in expected:
        assert p in params, f"{name} has no parameter {p!r}"
        assert p in doc, f"help({name}) does not describe {p!r}"


@pytest.mark.parametrize("name", ["find_atoms", "segment_defects", "fit_shift_vae", "run_campaign"])
def test_public_function_matches_its_generator_twin(name):
    """The public function spells out exactly the twin's parameters, with the same defaults."""
    func = getattr(mm, name)
    twin = getattr(inspect.getmodule(func), f"{name}_iter")
    public = {k: p.default for k, p in inspect.signature(func).parameters.items()}
    gen = {k: p.default for k, p in inspect.signature(twin).parameters.items()}
    assert public == gen


def test_campaign_defaults_are_the_learners():
    """run_campaign's learner keywords default to what ActiveLearner itself uses."""
    learner = inspect.signature(mm.ActiveLearner).parameters
    campaign = inspect.signature(mm.run_campaign).parameters
    shared = [k for k in learner if k != "structure"]
    assert shared and all(k in campaign for k in shared)
    assert {k: campaign[k].default for k in shared} == {k: learner[k].default for k in shared}
    from napari_microml.dkl.model import DKLModel

    model = inspect.signature(DKLModel).parameters  # the model keywords the learner passes on
    common = ("structure", "seed", "patch_size", "features", "device")  # the learner's own
    passed = [k for k in model if k in learner and k not in common]
    assert {k: learner[k].default for k in passed} == {k: model[k].default for k in passed}


# --- provenance on every tool's result -------------------------------------------------------
@pytest.fixture(scope="module")
def lattice():
    """A 64 × 64 square lattice of Gaussian columns, 8 px apart, with a little noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.arange(4, 64, 8.0), np.arange(4, 64, 8.0), indexing="ij")
    pos = np.column_stack([rows.ravel(), cols.ravel()])
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.zeros((64, 64))
    for r, c in pos:
        img += np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.5**2))
    return img + 0.02 * rng.standard_normal(img.shape), pos


def _run(tool, lattice):
    img, pos = lattice
    if tool == "find_atoms":
        return mm.find_atoms(img, device="cpu")
    if tool == "segment_defects":
        return mm.segment_defects(img, model="default", atoms=pos, device="cpu")
    if tool == "classify_environments":
        return mm.classify_environments(img, pos, seed=0)
    if tool == "complete_scan":
        mask = np.random.default_rng(1).random(img.shape) < 0.3
        return mm.complete_scan(img, mask, device="cpu")
    if tool == "fit_shift_vae":
        spectra = np.random.default_rng(2).random((16, 12))
        return mm.fit_shift_vae(spectra, epochs=1, hidden=8, device="cpu")
    if tool == "run_campaign":
        return mm.run_campaign(
            img[:12, :12],
            img[:12, :12],
            budget=4,
            n_initial=3,
            patch_size=4,
            n_models=1,
            device="cpu",
            init_iters=3,
            warm_iters=1,
            seed=5,
        )
    if tool == "analyze_lattice":
        return mm.analyze_lattice(pos, image=img)
    if tool == "count_atoms":
        return mm.count_atoms(img, pos)
    raise AssertionError(tool)


TOOLS = [
    "find_atoms",
    "segment_defects",
    "classify_environments",
    "complete_scan",
    "fit_shift_vae",
    "run_campaign",
    "analyze_lattice",
    "count_atoms",
]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_result_has_provenance(tool, lattice):
    prov = _run(tool, lattice).provenance
    assert isinstance(prov, dict)
    assert prov.get("tool"), f"{tool}'s provenance names no tool"
    assert prov.get("version") == mm.__version__


def test_campaign_provenance_records_its_run(lattice):
    prov = _run("run_campaign", lattice).provenance
    assert prov["seed"] == 5 and prov["device"]
    params = prov["parameters"]
    assert params["budget"] == 4 and params["n_initial"] == 3 and params["patch_size"] == 4
    assert params["acquisition"] == "ts" and params["init_iters"] == 3
