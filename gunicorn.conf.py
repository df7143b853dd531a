"""gunicorn's configuration for orderpipe's HTTP server (`gunicorn -c gunicorn.conf.py`: Compose's `web`, the
Dockerfile's CMD, `make run`); daphne serves the WebSockets beside it (Compose's `ws`). Options on the command line win
over this file. Why gunicorn with threads, and which variables it reads: docs/10-design-notes.md, "The HTTP server".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SystemExit(f"{name} must be a boolean (true/false), got {raw!r}")


wsgi_app = "orderpipe.wsgi:application"

# Loopback unless told otherwise: `make run` serves DEBUG pages and a demo login, which must not reach the network.
# The image sets WEB_BIND=0.0.0.0 (Dockerfile), since a container has to listen on its own interface for its
# published port to reach it. On the port the platform gives (Compose, `make run`); 8000 otherwise.
bind = f"{os.environ.get('WEB_BIND', '') or '127.0.0.1'}:{env_int('PORT', 8000)}"

# One process per core (the measurements were made with 2 on 2 cores). Not preloaded: each worker imports the app
# itself, so no database or Redis connection is ever shared across a fork.
workers = env_int("WEB_WORKERS", 2)
# gthread: each worker serves requests from a pool of threads. While one request waits on PostgreSQL's answers
# (the GIL is released) another runs, so a worker keeps its core busy; more threads than that only add contention
# (the layouts compared in docs/09-benchmark.md measured within the noise of 2 x 4).
worker_class = "gthread"
threads = env_int("WEB_THREADS", 4)

# A worker that stops reporting to the master for this long is killed and replaced (requests take milliseconds;
# only a wedged process gets near it).
timeout = 30
# On SIGTERM, workers finish their in-flight requests for up to this long: below Compose's default 10 s
# stop_grace_period, so gunicorn exits by itself before Docker sends SIGKILL.
graceful_timeout = 8

# Request-head limits, checked by gunicorn before Django sees anything. The longest real request line is an order's
# URL with a query (well under 1 KB); headers are a session cookie, a CSRF token and the usual browser set. Over
# them gunicorn answers 414 (request line) or 431 (header count or size) itself, as a small HTML page: it has no hook
# to shape those answers (Django's JSON errors begin only once a request has been parsed).
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

# One line per request is a lot at hundreds of requests a second: off unless WEB_ACCESS_LOG=true (then to stdout).
accesslog = "-" if env_bool("WEB_ACCESS_LOG", False) else None
# gunicorn's own messages (start, worker exits, errors) to stderr, at the level the app logs at.
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()

# gunicorn 25.1+ opens a control socket for `gunicornc` at one fixed per-user path ($HOME/.gunicorn/gunicorn.ctl),
# which every gunicorn of the user shares (tests, `make bench` and `make run` at once would take it from each
# other) and which the image's user, with no home directory, cannot create. Nothing here uses it. (Older gunicorns
# ignore the unknown name.)
control_socket_disable = True

# Metrics from every worker in one scrape. prometheus_client counts in the process that runs the code, and a scrape
# reaches one worker, so with 2 workers /metrics would show half the orders and Prometheus would see the counters
# jump back and forth. In its multiprocess mode every worker writes its counters and histograms to files in one
# directory and /metrics sums them (orderpipe/scrape.py). The directory is set when the server starts (in the master,
# before any worker imports prometheus_client) and emptied: a fresh temporary one unless the platform names one.
# Not when this file is merely read (`gunicorn --print-config`), which would leave a directory behind each time.
_own_metrics_dir = ""


def on_starting(server) -> None:
    global _own_metrics_dir
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
            stale.unlink()
    else:
        _own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="orderpipe-web-metrics-")


def child_exit(server, worker) -> None:
    # A replaced worker's counts stay in the sums (counters must not go down); its live-only values are dropped.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
