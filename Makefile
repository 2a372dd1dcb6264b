# make run   fresh machine -> venv, deps, data, a quick local search, its report
# make test  same set-up, then the test suite (no slow tests)
# make gpu-check  on a CUDA machine: the GPU paths end to end in <= 4 minutes (exit 2 where there is no CUDA)
# make dashboard RUN=NAME  Optuna's dashboard on results/NAME/optuna.db, served on 127.0.0.1 (prints the URL)
SHELL := /bin/bash
# The first Python that pyproject's requires-python (>= 3.11) admits: Ubuntu 22.04's python3 is 3.10.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
  $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= quick-$(shell date +%Y%m%d-%H%M%S)
ARGS ?=

.PHONY: run test test-all gpu-check data report dashboard clean-venv

$(PY):
	@[ -n "$(PYTHON)" ] || { echo "no Python >= 3.11 found (python3 is $$(python3 -V 2>&1)): install python3.11 and python3.11-venv, or pass PYTHON=/path/to/python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes. torch/torchvision are pinned (the wheels are cached locally
# on the reference machine; elsewhere pip downloads them).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	@# setuptools warns a page on every editable install of a flat layout ("Editable installation. Please be
	@# careful with folders ... same name as your package"): nothing to act on, so it is not shown
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e '.[test,aws,dashboard]'
	@touch $(STAMP)

# Fashion-MNIST: already there? else the Debian package (as root, or with password-less sudo),
# else torchvision's downloader, else a clear message.
data: $(STAMP)
	@$(PY) -m distributed.data 2>/dev/null || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	    if [ "$$SUDO" != none ]; then \
	      echo "installing Fashion-MNIST from the Debian package dataset-fashion-mnist"; \
	      $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	    fi; \
	  fi; \
	  $(PY) -m distributed.data 2>/dev/null || $(PY) -m distributed.data --download || { \
	    echo "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist, or set FASHION_MNIST_DIR to a directory holding the four IDX .gz files" >&2; exit 2; }; }

run: data
	$(PY) experiments/tune.py --preset quick --name $(RUN) $(ARGS)
	$(PY) experiments/report.py results/$(RUN)

test: data
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-all: data
	$(PY) -m pytest -q $(ARGS)

gpu-check: data
	$(PY) experiments/gpu_check.py $(ARGS)

# RUN has a default (a new quick-<timestamp> name, for make run) that names no existing run: ask for one.
dashboard: $(STAMP)
	@[ "$(origin RUN)" != file ] || { echo "make dashboard needs RUN=NAME, a run directory under results/ (ls results)" >&2; exit 2; }
	$(PY) experiments/dashboard.py results/$(RUN) $(ARGS)

clean-venv:
	rm -rf $(VENV)
