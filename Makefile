# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast bench install clean

# Create the virtual environment when missing and (re)install when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.demo $(ARGS)

# Every test, on every core (at most 4 workers; tests/conftest.py builds the shared fixtures once).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder

# The quick loop while editing (well under a minute on 2 cores): the parts without TensorFlow
# models (geo maths, geohash, whitelist, priors, metrics, readers, the stage engine, docs and
# architecture checks). `make test` before landing.
FAST_TESTS := $(addprefix tests/test_,architecture docs demo benchmarks harness inference oracle geo geohash \
	metrics priors whitelist data fileio)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(addsuffix .py,$(FAST_TESTS))

bench: $(STAMP)
	$(PY) -m benchmarks.run --seeds 3 $(ARGS)

clean:
	rm -rf $(VENV) out runs .pytest_cache
