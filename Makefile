# The README's two commands: `make demo` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# OpenRLHF's remote-reward client for the serving tests, in its own venv: the openrlhf wheel ships a
# top-level `tests` package, so it never goes into $(VENV) (tests/openrlhf_client.py).
ORLHF_VENV := .venv-openrlhf
ORLHF_STAMP := $(ORLHF_VENV)/.installed
# Ray and the jobs run in a loopback-only network namespace (ENVIRONMENT.md).
LOOPBACK := scripts/loopback.sh
DEMO_DIR ?= runs/demo

.PHONY: install test test-fast test-multinode demo clean

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

# The two-node cluster test runs in its own pytest process after the suite: it starts its own Ray
# cluster, apart from the suite's shared local instance, and needs the box's cores to itself.
test: install $(ORLHF_STAMP)
	$(LOOPBACK) $(PY) -m pytest -m "not gpu and not multinode" tests
	$(LOOPBACK) $(PY) -m pytest -m multinode tests

test-multinode: install
	$(LOOPBACK) $(PY) -m pytest -m multinode tests

test-fast: install
	$(LOOPBACK) $(PY) -m pytest -m "not gpu and not integration" tests

demo: install
	$(LOOPBACK) sh scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(ORLHF_VENV) runs .pytest_cache
