# `make test` and `make run` work on a fresh clone: they create .venv when missing and install
# the project into it. TORCH_SPEC is installed first because on the project's machines pip
# serves exactly these releases from local disk; any other torch pulls gigabytes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: test lint run ui bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# The main job: the default sweep (lenet300-digits) on a local Ray instance, tracked in a local
# MLflow store under $(STORAGE); prints the Pareto table and the command that opens the UI.
STORAGE ?= $(CURDIR)/runs
run: $(VENV)/.installed
	$(VENV)/bin/dcsweep run lenet300-digits --storage $(STORAGE)

# The MLflow UI on the sweeps `make run` left in $(STORAGE), on http://127.0.0.1:5000.
ui: $(VENV)/.installed
	$(VENV)/bin/dcsweep ui --storage $(STORAGE)

test: lint
	@# pytest exits 5 when it collected nothing; that is not a failure of the code.
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# ruff on everything, mypy on the package (configured in pyproject.toml); any finding fails.
# mypy sees the package under its import names through a tree of links (the folders are mapped
# into `dcsweep` by pyproject's package-dir, which an editable install does with an import hook
# that mypy cannot follow).
TYPECHECK := build/typecheck/dcsweep
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	for p in compression runner search_spaces; do ln -s ../../../$$p $(TYPECHECK)/$$p; done
	$(VENV)/bin/mypy $(TYPECHECK)

bench: $(VENV)/.installed
	$(PY) bench/kmeans.py
	$(PY) bench/finetune_step.py
	$(PY) bench/coding.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache
