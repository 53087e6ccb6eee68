# sysextpy: the two commands of the README, plus install and the linters.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PREFIX ?= /usr
DESTDIR ?=

.PHONY: demo test lint venv bench clean

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q pytest pyfakefs hypothesis ruff mypy systemd-python
	touch $@

# The main job on the built-in example, in a private mount namespace (needs root).
demo:
	unshare -m --propagation private $(PYTHON) tests/demo.py

# The whole test suite, linters included.
test: venv
	$(VENV)/bin/python -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sysextpy

bench: venv
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
