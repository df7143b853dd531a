# orderpipe — `make run` starts everything on local services, `make test` runs the suite.
# Both create the virtualenv and install what they need on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export DJANGO_DEBUG ?= true

.PHONY: install run test lint format bench cluster cluster-stop clean-venv

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
	PORT=$(PORT) PYTHON=$(PY) bin/run-all

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

# Three RabbitMQ nodes joined into one cluster on loopback (AMQP 5681-5683, state in var/rabbitmq-cluster), beside the
# machine's own broker. It prints the AMQP_URL naming all three; `make cluster-stop` stops them.
cluster:
	bin/rabbitmq-cluster start

cluster-stop:
	bin/rabbitmq-cluster stop

clean-venv:
	rm -rf $(VENV)
