# `make test` and `make run` work on a fresh clone: they create .venv when missing and install
# the project into it. TORCH_SPEC is installed first because on the project's machines pip
# serves exactly these releases from local disk; any other torch pulls gigabytes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Every package at the version the suite last passed with (`make lock` writes it): a fresh clone
# installs exactly what CI tested. `make CONSTRAINTS= run` installs from pyproject's ranges alone.
CONSTRAINTS ?= constraints.txt
PIP_INSTALL := $(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# The oldest Optuna that pyproject admits, beside the venv: tests/runner/adapters/test_optuna.py
# runs Optuna search on it as well as on the locked release.
OPTUNA_OLDEST ?= 3.6.2

.PHONY: test lint run ui bench clean lock upgrade-check

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) $(TORCH_SPEC)
	$(PIP_INSTALL) -e '.[test,bench]'
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/optuna-oldest optuna==$(OPTUNA_OLDEST)
	touch $@

# Writes $(CONSTRAINTS) from the venv, after its suite passed: `make lock` for .venv, or
# `make lock VENV=build/upgrade-venv` to take what `make upgrade-check` found working.
lock:
	{ echo "# Written by \`make lock\` from the venv the suite passed in ($$($(PY) -V), $$(uname -sm))."; \
	  $(PY) -m pip freeze --all --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

# The newest releases pyproject's ranges allow, in a scratch venv: which packages moved against
# $(CONSTRAINTS), the fast suite and one real sweep per search algorithm. Not part of `make test`.
upgrade-check: $(VENV)/.installed
	$(PY) .ci/upgrade_check.py --constraints $(CONSTRAINTS) --torch '$(TORCH_SPEC)'

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
