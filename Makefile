# Two entry points for a fresh machine:
#   make bench   sets up .venv and runs the throughput benchmark (ResNet-32, SGD vs SAM vs ZO-SAM)
#   make test    sets up .venv and runs the whole test suite
# torch is pinned with the torchvision that imports beside it (zosam-train's CIFAR and
# ImageFolder transforms, and timm, need torchvision). No torchvision imports beside the CPU
# build torch 2.13.0 on this disk; 2.14.1 + 0.29.1 are the x86_64 pair that does: a CUDA
# build (about 5.5 GB, installed from the local disk in under 2 minutes) that runs on the CPU.
# An unpinned torch would download GBs of CUDA wheels instead.
# mnist1d (zosam-train --data mnist1d) brings requests, scipy and matplotlib, no torch.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
# The trainers of the [lightning] and [hf] extras, pinned to releases that accept the torch pin
# and pull no other torch (their tests run in `make test`, and skip where they are missing).
TRAINERS ?= lightning==2.6.6 transformers==5.25.0 accelerate==1.16.0
# the linter and the type checker that tests/test_lint.py runs (pyproject.toml configures them)
CHECKERS ?= ruff==0.17.6 mypy==2.4.1
MNIST1D ?= mnist1d==0.0.2.post1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zosam-installed

.PHONY: bench test clean gpu-wheels

# the Makefile too: a venv made before a package joined the list installs it at the next make
$(STAMP): Makefile setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) numpy ninja setuptools wheel pytest pytest-benchmark matplotlib \
		"triton>=3.0" tqdm timm==1.0.31 scikit-learn==1.9.1 $(MNIST1D) $(TRAINERS) $(CHECKERS)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/zosam-bench $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests -q $(ARGS)

# For a lent GPU: the wheels of what the suite needs and the device image (Python 3.12) lacks,
# mnist1d and the checkers, with what mypy needs beyond the image; benchmarks/gpu_check.sh
# installs them once the device tool's `run` carries .whl/.
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(MNIST1D) $(CHECKERS) "librt>=0.16.0" "ast-serialize>=0.12.1,<1" "pathspec>=1.0.0"

clean:
	rm -rf $(VENV) build *.egg-info zosam_kernels/_C*.so
