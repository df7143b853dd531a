# orderpipe — `make run` starts everything on local services, `make test` runs the suite.
# Both create the virtualenv and install what they need on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# `make run` listens on loopback only (DEBUG pages, demo login); `make run WEB_BIND=0.0.0.0` opens it to the network.
WEB_BIND ?= 127.0.0.1
export DJANGO_DEBUG ?= true

.PHONY: install run test lint format bench clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) manage.py ensure_database
	$(PY) manage.py migrate --no-input -v0
	$(PY) manage.py seed_demo
	$(PY) manage.py ensure_demo_staff
	PORT=$(PORT) WEB_BIND=$(WEB_BIND) PYTHON=$(PY) bin/run-all

test: install
	DJANGO_DEBUG=false $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Not part of `make test` (its 50-order smoke is): several minutes, and it wants a quiet machine.
bench: install
	$(VENV)/bin/pip install -q ".[dev,bench]"
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	DJANGO_DEBUG=false $(PY) -m bench.run $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
