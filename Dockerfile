# orderpipe: one image for every role (web, ws, relay, worker, migrate; docker-compose.yml picks the command), and
# the front door (nginx with the collected static files: `--target front`). The default target is the app.
ARG NGINX_IMAGE=nginx:1.27-bookworm

# ---------------------------------------------------------------- build: dependencies and static files
FROM python:3.11-slim AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so this layer is rebuilt only when pyproject.toml changes. Runtime dependencies only: the
# dev extra (pytest, ruff, playwright ...) never reaches the image. Into a venv without pip or setuptools of its
# own (the base's pip installs into it), which the app stage copies whole.
COPY pyproject.toml README.md ./
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install . \
    && rm -rf build ./*.egg-info

COPY . .

# Settings refuse to load without a real secret outside debug mode; collectstatic needs none, so it gets a
# throwaway value that lives only in this RUN step (never an ENV of the image).
RUN DJANGO_SECRET_KEY=collectstatic-build-only /opt/venv/bin/python manage.py collectstatic --no-input -v0

# ---------------------------------------------------------------- front: the front door (deploy/nginx/)
# Before the app stage, so that the default target is the app; BuildKit skips this stage when building the app.
# What changes with the code comes last (each instruction of the legacy builder copies the image on a vfs daemon).
FROM ${NGINX_IMAGE} AS front
RUN rm -f /etc/nginx/conf.d/default.conf /etc/nginx/sites-enabled/default \
    && echo "include /etc/nginx/orderpipe/front-door.conf;" > /etc/nginx/conf.d/orderpipe.conf
EXPOSE 80
# Healthy when it answers /healthz through to the web service (the image may have no curl; bash it has).
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD \
    ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
CMD ["nginx", "-g", "daemon off;"]
COPY deploy/nginx/ /etc/nginx/orderpipe/
COPY --from=build /app/staticfiles /srv/orderpipe/static

# ---------------------------------------------------------------- app: the default target
FROM python:3.11-slim AS app

# Each role's port: gunicorn ($PORT), daphne (8001, docker-compose.yml), the relay's and the worker's Prometheus
# metrics. No two roles share a default, so they may share a host network.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PORT=8000 \
    WEB_BIND=0.0.0.0 \
    RELAY_METRICS_PORT=9101 \
    WORKER_METRICS_PORT=9102

# A regular user (uid 10001, no home, no login shell); the code and static files stay owned by root: it can read
# them, not change them.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin orderpipe
USER orderpipe
WORKDIR /app
EXPOSE 8000 8001 9101 9102
# bin/healthcheck asks the role this container runs on its own port: /healthz of gunicorn or daphne, /metrics of
# the relay or the worker (the one-shot migrate has nothing to ask).
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD ["python", "bin/healthcheck"]
# The web server's command: Compose's `web` runs this CMD, so it is written here only. exec: gunicorn replaces the
# shell, so it receives `docker stop`'s SIGTERM itself; it binds $WEB_BIND:$PORT (gunicorn.conf.py).
CMD ["sh", "-c", "exec gunicorn -c gunicorn.conf.py"]

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
