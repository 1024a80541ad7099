# Two commands do everything on a fresh machine:
#   make demo   set up .venv (torch CPU, the package) and run the main job on bundled data
#   make test   set up .venv with test dependencies and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= demo_out

.PHONY: demo test bench setup setup-test clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

setup-test:
	VENV=$(VENV) bash scripts/setup.sh --test

demo: setup
	$(PY) examples/demo.py --out $(OUT)

test: setup-test
	$(PY) -m pytest -q -p xvfb tests

bench: setup-test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build dist src/*.egg-info src/deltamic_core/_C*.so
