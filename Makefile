# Two commands do everything on a fresh machine:
#   make demo   set up .venv (torch CPU, the package) and run the main job on bundled data
#   make test   set up .venv with test dependencies and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= demo_out

.PHONY: demo test bench lint lint-format setup setup-test napari figure clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

setup-test:
	VENV=$(VENV) bash scripts/setup.sh --test

demo: setup
	$(PY) examples/demo.py --out $(OUT)

test: setup-test
	$(PY) -m pytest -q -p xvfb tests

# ruff check and ruff format --check over the whole tree, import layers (pyproject [tool.importlinter])
LINT_PATHS ?= src tests examples benchmarks scripts

lint: setup-test
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(MAKE) lint-format
	$(VENV)/bin/lint-imports

lint-format:
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# napari with the bundled sample opened and the deltaMic widget docked (after `make demo`)
napari:
	@test -x $(VENV)/bin/napari || { echo "make napari: napari is not installed in $(VENV): run 'make demo' first" >&2; exit 1; }
	$(PY) scripts/napari_demo.py $(NAPARI_ARGS)

# docs/figure_workflow.png, the README's figure: seeding, fitting and a per-cell refit in napari
figure:
	@test -x $(VENV)/bin/napari || { echo "make figure: napari is not installed in $(VENV): run 'make demo' first" >&2; exit 1; }
	$(PY) scripts/make_figure.py $(FIGURE_ARGS)

bench: setup-test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build dist src/*.egg-info src/deltamic_core/_C*.so src/deltamic_core/_csrc
