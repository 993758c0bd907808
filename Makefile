# Two entry points, as in the README's Quickstart: `make demo` and `make test`; `make docs` builds the site.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

$(BIN)/graft: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/graft
	$(BIN)/pip install --quiet -e '.[test,text,onnx,keras,serve,distributed,tensorboard,mlflow,tables,datasets,docs]'
	touch $@

.PHONY: demo test test-slow lint docs
demo: $(BIN)/graft
	$(BIN)/graft demo

# one pytest process per core (each test runs torch single-threaded; a file's tests stay in one
# process, so its module fixtures are built once), then the tests that assert
# wall-clock times on their own, so that no other test competes with them for the cores, then the
# tests whose numbers a machine's precision decides, as on a CPU with native bf16 and as on one
# without (GRAFT_CPU_BF16), whichever this machine is
test: $(VENV)/.test-deps
	$(BIN)/ruff check src tests bench examples tools
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m 'not slow and not timing'
	$(BIN)/python -m pytest -q -m 'timing and not slow'
	GRAFT_CPU_BF16=1 $(BIN)/python -m pytest -q -n auto --dist loadfile -m 'precision and not slow'
	GRAFT_CPU_BF16=0 $(BIN)/python -m pytest -q -n auto --dist loadfile -m 'precision and not slow'

# the documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or reference fails
docs: $(VENV)/.test-deps
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test-slow: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -m slow
