# orderpipe: one image for every role (web, ws, relay, worker, migrate); docker-compose.yml picks the command.
# Left to itself the image serves HTTP with gunicorn (gunicorn.conf.py); the WebSockets need daphne beside it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    WEB_BIND=0.0.0.0

WORKDIR /app

# Dependencies first, so this layer is rebuilt only when pyproject.toml changes. Runtime dependencies only: the
# dev extra (pytest, ruff, playwright ...) never reaches the image.
COPY pyproject.toml README.md ./
RUN pip install . && rm -rf build ./*.egg-info

COPY . .

# Settings refuse to load without a real secret outside debug mode; collectstatic needs none, so it gets a
# throwaway value that lives only in this RUN step (never an ENV of the image).
RUN DJANGO_SECRET_KEY=collectstatic-build-only python manage.py collectstatic --no-input -v0

# The code and static files stay owned by root: the app user can read them, not change them.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin orderpipe
USER orderpipe

# 8000: HTTP (gunicorn, $PORT); 8001: WebSockets (daphne, Compose's `ws` service).
EXPOSE 8000 8001
# exec: gunicorn replaces the shell, so it receives `docker stop`'s SIGTERM itself. It binds $WEB_BIND:$PORT
# (0.0.0.0 here: a container must listen on its own interface; which host address publishes it is Compose's choice).
CMD ["sh", "-c", "exec gunicorn -c gunicorn.conf.py"]
