# `make run` sets everything up and runs the default study; `make test` sets up and runs the tests.
SPEC ?= search_spaces/psi_vs_static.yaml
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first with an upper bound so a CPU-only machine with a local CPU wheel keeps it;
# on a GPU machine install the torch build you need before `make`.
TORCH_SPEC ?= torch>=2.4,<2.14

.PHONY: setup run test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m study.run $(SPEC)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/lead_step.py

clean:
	rm -rf $(VENV) .pytest_cache
