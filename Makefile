# Two entry points for a fresh machine:
#   make bench   sets up .venv and runs the throughput benchmark (ResNet-32, SGD vs SAM vs ZO-SAM)
#   make test    sets up .venv and runs the whole test suite
# torch is pinned: 2.13.0 is the CPU build; an unpinned torch pulls GBs of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zosam-installed

.PHONY: bench test clean

$(STAMP): setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" numpy ninja setuptools wheel pytest pytest-benchmark matplotlib "triton>=3.0"
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/zosam-bench $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests -q $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info zosam_kernels/_C*.so
