# The README's two commands: `make demo` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Ray and the jobs run in a loopback-only network namespace (ENVIRONMENT.md).
LOOPBACK := scripts/loopback.sh
DEMO_DIR ?= runs/demo

.PHONY: install test test-fast demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(LOOPBACK) $(PY) -m pytest -m "not gpu" tests

test-fast: install
	$(LOOPBACK) $(PY) -m pytest -m "not gpu and not integration" tests

demo: install
	$(LOOPBACK) sh scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs .pytest_cache
