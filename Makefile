# Quick start: `make demo` (a training run streaming into a local TensorBoard)
# and `make test` (the whole suite, browser included). Both set everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: venv demo test lint bench clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[tf,test]"
	# PyTorch only for the optional torch tests, and only from the CPU wheel that
	# machines of this kind keep in /opt/wheels (never the multi-GB CUDA build);
	# then the torch-based integrations' test packages (Lightning, accelerate),
	# which would otherwise pull a CUDA torch of their own.
	if ls /opt/wheels/torch-2.13.0* >/dev/null 2>&1; then \
	  $(PIP) install --quiet torch==2.13.0 && $(PIP) install --quiet -e ".[torch-test]"; fi
	touch $(STAMP)

venv: $(STAMP)

chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  echo "Installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

demo: $(STAMP)
	$(PY) demos/run_demo.py

test: $(STAMP) chromium
	$(VENV)/bin/ruff check beholder_plugin tests demos benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check beholder_plugin tests demos benchmarks
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/update_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info test-artifacts
