# make run   fresh machine -> venv, deps, data, a quick local search, its report
# make test  same set-up, then the test suite (no slow tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= quick-$(shell date +%Y%m%d-%H%M%S)
ARGS ?=

.PHONY: run test test-all data report clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes. torch/torchvision are pinned (the wheels are cached locally
# on the reference machine; elsewhere pip downloads them).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[test]'
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

clean-venv:
	rm -rf $(VENV)
