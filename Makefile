# Two commands do everything on a fresh Linux machine:
#   make demo   napari with the plugin, its sample data and the Atom finder docked
#               (no display: the headless demo writes results + a screenshot to demo_output/)
#   make test   installs what the tests need (apt packages for Xvfb/OpenGL, a .venv) and runs them
#               after `make lint` (ruff check, ruff format --check, mypy: seconds, fails fast)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned CPU wheel is installed first so no dependency pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
PYTEST_ARGS ?=

.PHONY: demo test lint venv sysdeps benchmarks train train-atoms train-defects train-completion clean

$(VENV)/.installed: setup.cfg pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[testing]"
	touch $@

venv: $(VENV)/.installed

sysdeps:
	@if command -v apt-get >/dev/null && ! (command -v xvfb-run >/dev/null && ldconfig -p | grep -q libxcb-cursor); then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

# ruff and mypy read their settings from pyproject.toml (mypy checks src/napari_microml).
lint: venv
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(VENV)/bin/ruff format --check src tests benchmarks docs
	$(VENV)/bin/mypy

test: sysdeps venv lint
	QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" $(PY) -m pytest $(PYTEST_ARGS)

demo: sysdeps venv
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
		$(PY) -m napari_microml.demo; \
	else \
		echo "No display: running the headless demo (results + screenshot in demo_output/)"; \
		QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" $(PY) -m napari_microml.demo --headless --out demo_output; \
	fi

# the benchmarks proper (dkl_tune.py chooses DKL defaults on synthetic data; defects_errors.py,
# defects_rescue.py and dkl_threads.py analyse validation seeds: run those by hand)
BENCHMARKS := atoms defects environments completion dkl spectra batch lattice finetune journeys
benchmarks: venv
	for b in $(BENCHMARKS); do $(PY) benchmarks/$$b.py || exit 1; done

# Reproduce the shipped weights (CPU, 1 thread each; the chains are in nets/MODEL_CARD.md).
TRAIN := OMP_NUM_THREADS=1 $(PY) -m napari_microml.training
train: train-atoms train-defects train-completion

train-atoms: venv
	$(TRAIN).atoms --steps 1500 --seed 0 --scene-p 0.4,0.2,0.2,0.2
	$(TRAIN).atoms --init default --steps 1500 --seed 1 --lr 1e-3
	$(TRAIN).atoms_finetune --steps 300

train-defects: venv
	$(TRAIN).defects --steps 6000 --minutes 75 --seed 0
	$(TRAIN).defects --init default --steps 2500 --minutes 20 --lr 5e-4 --seed 1

train-completion: venv
	$(TRAIN).completion --phase pixel --steps 3400 --seed 0
	$(TRAIN).completion --phase pixel --init completion-pixel --steps 1500 --lr 5e-4 --clean-frac 0.35 --n-bank 300 --seed 1
	$(TRAIN).completion --phase gan --steps 400 --n-bank 300 --clean-frac 0.35 --seed 1

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache .ruff_cache
