# `make demo` and `make test` are the README's two commands; both set up .venv on first use.
# The venv sees the system's packages, so a GPU machine's own torch is used as it is; where no torch
# is importable, torch 2.13.0 comes from pip's configured index: on this project's CI machines a CPU
# build lying on disk, from PyPI on Linux the (much larger) CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup demo test test-floor bench lint clean gpu-carry

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) torch==2.13.0
	$(PY) -c "import triton" 2>/dev/null || $(PIP) triton==3.6.0
	$(PIP) -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m train.demo

# The benchmark suites run too, so that they keep working (at their CPU sizes without a GPU, at full
# size on one): in a pytest process of their own, as the tests switch Triton's interpreter on
# (tests/conftest.py) and the suites must not.
test: setup
	$(PY) -m pytest -q
	$(PY) -m pytest -q bench

# The same on the oldest stack pyproject.toml allows, the lent GPU machines' (torch 2.11, Triton 3.6),
# in .venv-floor: Dynamo traces differ between torch versions, and bf785e5 fixed code that torch 2.13
# compiled and 2.11 did not. PyPI's torch 2.11 is the CUDA build (about 5 GB with its NVIDIA
# libraries); it runs on the CPU. Not part of `make test` or CI.
FLOOR := .venv-floor
test-floor:
	test -x $(FLOOR)/bin/python || $(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.11.0 triton==3.6.0 -e ".[dev]"
	$(FLOOR)/bin/python -m pytest -q
	$(FLOOR)/bin/python -m pytest -q bench

bench: setup
	$(PY) -m pytest bench -q --benchmark-json=bench/results/latest.json

# What a lent GPU machine (Python 3.12, no network, no ../shared) needs beside the tree, for the
# device tool's carry [".whl", ".gpu_shared"] (bench/gpu_session.py says how a call installs them):
# wheels of the dependencies it lacks, and the shared data the suites read.
GPU_WHEELS := pycocotools==2.0.11 hydra-core==1.3.2 omegaconf==2.3.0 torch-linear-assignment==0.1.0 \
	pytest-timeout==2.4.0
gpu-carry: setup
	rm -rf .whl .gpu_shared
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PY) -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
	mkdir -p .gpu_shared/data
	cp -r ../shared/data/coco-mini ../shared/data/unlabelled-coco-photos .gpu_shared/data/

lint: setup
	$(PY) -m ruff check kernels jcra train bench tests

clean:
	rm -rf $(VENV) $(FLOOR) outputs .pytest_cache .benchmarks
