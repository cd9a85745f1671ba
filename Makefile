# lowbit: `make train` and `make test` install what they need first (into .venv, once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Rebuilt only when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
ARGS ?=

.PHONY: install train test test-slow test-all lint docs docs-serve report export bench profile clean help

help:
	@echo "make train [ARGS='quantizer=dorefa quant.wbits=4']  train (NIN on digits by default)"
	@echo "make test                                           the test suite (slow tests excluded)"
	@echo "make test-slow / test-all                           the slow accuracy tests / everything"
	@echo "make lint                                           ruff: lint, then the format check"
	@echo "make docs / docs-serve                              the documentation site, strict (site/) / served locally"
	@echo "make report [SWEEP=outputs/multiruns/<dir>]         HTML/PNG/Markdown comparison of a sweep (default: the latest)"
	@echo "make export RUN=outputs/runs/<dir>                  integer ONNX export of a finished run, measured"
	@echo "make bench                                          size, int8 latency and train-step ratios on NIN"
	@echo "make profile [ARGS='quantizer=dorefa quant.gbits=8']   one training step per layer and quantizer vs FP32"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# lowbit's own sweeper replaced hydra-optuna-sweeper, which pins Optuna below 3 and registers
	# the same hydra/sweeper=optuna options: gone from a .venv made before (#30).
	$(PY) -m pip uninstall --quiet --yes hydra-optuna-sweeper
	rm -f $(VENV)/.installed-*
	touch $@

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q

test-all: install
	$(PY) -m pytest -q

# Rules and line length: [tool.ruff] in pyproject.toml. `ruff format .` fixes the format.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The docs extra goes into .venv beside the test one, once per pyproject.toml (its own stamp).
DOCS_STAMP := $(VENV)/.docs-$(shell cksum pyproject.toml | cut -d' ' -f1)
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,docs]"
	rm -f $(VENV)/.docs-*
	touch $@

# Strict: a broken link, a missing page in the nav or a docstring warning fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# The most recently written sweep folder unless SWEEP names one.
SWEEP ?= $(shell ls -dt outputs/multiruns/*/ 2>/dev/null | head -n 1)
report: install
	@test -n "$(SWEEP)" || { echo "make report: no sweep under outputs/multiruns; run python train.py -m ... first, or give SWEEP=DIR"; exit 2; }
	$(PY) scripts/report.py $(SWEEP)

export: install
	@test -n "$(RUN)" || { echo "make export: give the run folder, RUN=outputs/runs/<dir>"; exit 2; }
	$(PY) scripts/export.py $(RUN)

bench: install
	$(PY) scripts/bench.py

# ARGS: train.py's overrides (and --threads/--repeats/--top), e.g. ARGS='quantizer=pact'
profile: install
	$(PY) scripts/profile_step.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .hypothesis site
