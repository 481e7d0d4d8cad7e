from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real third-party data); tests that need it skip with a reason if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present (it sits beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def one_torch_thread():
    """Tiny networks: one torch thread is faster (and steadier) on a shared 2-core machine."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def one_torch_thread_module():
    """The same for a whole module, module-scoped fixtures (fitted learners) included."""
    yield from _one_thread()


@pytest.fixture
def user_models_folder(tmp_path, monkeypatch) -> Path:
    """A fresh per-user models folder for the test: never the real one."""
    from napari_microml.nets import user_models

    folder = tmp_path / "models"
    monkeypatch.setenv(user_models.ENV, str(folder))
    return folder
