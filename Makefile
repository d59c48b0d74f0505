# Two entry points for a newcomer: `make quickstart` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: install quickstart test test-all

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'

quickstart: install
	$(PY) -m jobs.quickstart

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""
