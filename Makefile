# orderpipe — `make run` starts everything on local services, `make test` runs the suite.
# Both create the virtualenv and install what they need on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# `make run` listens on loopback only (DEBUG pages, demo login); `make run WEB_BIND=0.0.0.0` opens it to the network.
WEB_BIND ?= 127.0.0.1
export DJANGO_DEBUG ?= true

.PHONY: install run test test-fast lint format bench mutants docker-check cluster cluster-stop clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q ".[dev]"
	touch $@

install: $(VENV)/.installed

# `make run CLUSTER=1` first starts (or reuses) `make cluster`'s three RabbitMQ nodes and runs against all three, so
# the dashboard can kill and restart them. The nodes outlive `make run`: `make cluster-stop` stops them.
CLUSTER ?=

run: install
	$(PY) manage.py ensure_database
	$(PY) manage.py migrate --no-input -v0
	$(PY) manage.py seed_demo
	$(PY) manage.py ensure_demo_staff
ifeq ($(CLUSTER),1)
	bin/rabbitmq-cluster start
	AMQP_URL="$$(bin/rabbitmq-cluster url)" PORT=$(PORT) WEB_BIND=$(WEB_BIND) PYTHON=$(PY) bin/run-all
else
	PORT=$(PORT) WEB_BIND=$(WEB_BIND) PYTHON=$(PY) bin/run-all
endif

# Two pytest-xdist workers, a test file each at a time (`--dist loadfile`: a file's module fixtures, such as its
# servers or its three-node cluster, stay in one process). Each worker has its own database, queue prefix and Redis
# keys (orderpipe/testing.py). Most of the suite waits on real processes, so two workers on two cores take about a
# third less time than one. `make test TEST_WORKERS=0` runs it in this one process.
TEST_WORKERS ?= 2
# node_modules: the browser tests inject axe-core from it (worker/tests/test_browser_accessibility.py).
test: install node_modules/.installed
	DJANGO_DEBUG=false $(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# The tests marked `pure` (layering, configuration, the permission table, docs links, units): no PostgreSQL,
# RabbitMQ or Redis. Their URLs point at a closed port here, so a `pure` test that touches a service fails.
UNREACHABLE := DATABASE_URL=postgres://nobody@127.0.0.1:9/none REDIS_URL=redis://127.0.0.1:9/0 \
	AMQP_URL=amqp://nobody:nobody@127.0.0.1:9/%2F
test-fast: install
	$(UNREACHABLE) DJANGO_DEBUG=false $(PY) -m pytest -m pure $(PYTEST_ARGS)

# The JS linter and formatter (Biome) and the browser tests' axe-core, pinned by package-lock.json, in node_modules/
# (git-ignored).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Every check CI runs before the tests (.ci/run), the same as .pre-commit-config.yaml's hooks.
lint: install node_modules/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	git ls-files -z '*.py' | xargs -0 $(VENV)/bin/django-upgrade --target-version 5.2 --check
	$(VENV)/bin/djlint templates --lint
	$(VENV)/bin/djlint templates --check
	node_modules/.bin/biome ci
	$(VENV)/bin/mypy
	$(PY) bin/complexity-check

format: install node_modules/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	git ls-files -z '*.py' | xargs -0 $(VENV)/bin/django-upgrade --target-version 5.2
	$(VENV)/bin/djlint templates --reformat
	node_modules/.bin/biome check --write

# The mutation check of the guarantees (bin/mutation-check): each promise broken in turn on a temporary copy of the
# tree, and the tests guarding it must fail. `make mutants MUTANTS_ARGS="-k guard"` runs some of them.
mutants: install
	$(PY) bin/mutation-check $(MUTANTS_ARGS)

# Not part of `make test` (its 50-order smoke is): several minutes, and it wants a quiet machine.
bench: install
	$(VENV)/bin/pip install -q ".[dev,bench]"
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	DJANGO_DEBUG=false $(PY) -m bench.run $(BENCH_ARGS)

# The image and the Compose stack for real (bin/docker-check): builds, brings the stack up, places orders through the
# front door, scales and kills workers, then removes it all. Installs Docker and Compose v2 when missing and starts
# a dockerd of its own when none answers.
docker-check:
	bin/docker-check

# Three RabbitMQ nodes joined into one cluster on loopback (AMQP 5681-5683, state in var/rabbitmq-cluster), beside the
# machine's own broker. It prints the AMQP_URL naming all three; `make cluster-stop` stops them.
cluster:
	bin/rabbitmq-cluster start

cluster-stop:
	bin/rabbitmq-cluster stop

clean-venv:
	rm -rf $(VENV)
