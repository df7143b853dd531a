"""No Docker engine runs in CI, so the Compose file, the Dockerfile and .env.example are checked against the code
they start: every command must exist and accept its options, every variable must be one that settings reads, and
the services must start in the right order, with health checks, data volumes, and a worker that scales."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands, load_command_class
from django.urls import resolve

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Services that run this project's image (the others are PostgreSQL, RabbitMQ and Redis).
APP_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)
SERVERS = ["postgres", "rabbitmq", "redis", "web"]
ONE_SHOT = {"migrate"}

# Variables the Python runtime or pip read, not the project.
RUNTIME_VARIABLES = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}


def settings_variables() -> set[str]:
    """Every variable settings.py reads: it reads the environment only through the env_* helpers."""
    source = (ROOT / "orderpipe" / "settings.py").read_text()
    names = set(re.findall(r"\benv_(?:str|bool|int|float|list)\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    assert len(names) > 10, "the env_* helper calls were not found: did settings.py change how it reads env?"
    return names


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "an app service must say which role it runs"
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def shell_commands(service: dict[str, Any]) -> list[list[str]]:
    """The commands a service runs, with `sh -c "a && b"` split into [a, b] and Compose's $$ unescaped."""
    args = argv(service)
    if args[:2] == ["sh", "-c"]:
        script = args[2].replace("$$", "$")
        return [shlex.split(part) for part in re.split(r"&&|;", script) if part.strip()]
    return [args]


def test_the_compose_file_has_every_role():
    assert set(SERVICES) >= {"postgres", "rabbitmq", "redis", "migrate", "web", "relay", "worker"}
    assert APP_SERVICES == ["migrate", "relay", "web", "worker"]
    assert SERVICES["rabbitmq"]["image"].startswith("rabbitmq:") and "management" in SERVICES["rabbitmq"]["image"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_command_exists_and_accepts_its_options(name):
    known = get_commands()
    for command in shell_commands(SERVICES[name]):
        command = [part for part in command if part != "exec"]
        if command[:2] == ["python", "manage.py"]:
            subcommand, options = command[2], command[3:]
            assert subcommand in known, f"{name}: manage.py has no command {subcommand!r}"
            parser = load_command_class(known[subcommand], subcommand).create_parser("manage.py", subcommand)
            parser.parse_args(options)  # exits (SystemExit) on an unknown option
        elif command[0] == "daphne":
            target = command[-1]
            module, _, attribute = target.partition(":")
            assert getattr(importlib.import_module(module), attribute) is not None, target
        else:
            pytest.fail(f"{name}: unexpected command {command}")


def test_each_role_runs_what_the_design_says():
    assert [c[:3] for c in shell_commands(SERVICES["migrate"])] == [
        ["python", "manage.py", "migrate"],
        ["python", "manage.py", "seed_demo"],
    ]
    assert shell_commands(SERVICES["web"])[0][-1] == "orderpipe.asgi:application"
    assert "$PORT" in shell_commands(SERVICES["web"])[0]
    assert argv(SERVICES["relay"])[:3] == ["python", "manage.py", "run_relay"]
    assert argv(SERVICES["worker"])[:3] == ["python", "manage.py", "run_worker"]


def test_every_variable_is_one_that_settings_reads():
    known = settings_variables()
    example = env_example()
    unknown = set(example) - known
    assert not unknown, f".env.example sets variables settings.py never reads: {sorted(unknown)}"
    for name in APP_SERVICES:
        unknown = set(environment(SERVICES[name])) - known
        assert not unknown, f"{name} sets variables settings.py never reads: {sorted(unknown)}"
    dockerfile_env = set(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]*)=", (ROOT / "Dockerfile").read_text(), re.M))
    unknown = dockerfile_env - known - RUNTIME_VARIABLES - {"DJANGO_SECRET_KEY"}
    assert not unknown, f"the Dockerfile sets variables settings.py never reads: {sorted(unknown)}"


def test_every_app_service_reads_env_example():
    for name in APP_SERVICES:
        files = SERVICES[name]["env_file"]
        paths = [f if isinstance(f, str) else f["path"] for f in files]
        assert ".env.example" in paths, name
        # A local .env may override the example, but must not be required for the first run.
        for entry in files:
            if not isinstance(entry, str) and entry["path"] == ".env":
                assert entry.get("required") is False


def test_the_example_configuration_loads_and_points_at_the_compose_services():
    example = env_example()
    for url, host in (("DATABASE_URL", "postgres"), ("AMQP_URL", "rabbitmq"), ("REDIS_URL", "redis")):
        assert f"@{host}:" in example[url] or f"//{host}:" in example[url], url
    pg = environment(SERVICES["postgres"])
    assert example["DATABASE_URL"].startswith(f"postgres://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@")
    assert example["DATABASE_URL"].endswith(f"/{pg['POSTGRES_DB']}")
    mq = environment(SERVICES["rabbitmq"])
    assert example["AMQP_URL"].startswith(f"amqp://{mq['RABBITMQ_DEFAULT_USER']}:{mq['RABBITMQ_DEFAULT_PASS']}@")
    # The settings accept these values as they are (a production-mode start refuses, e.g., the dev secret key).
    code = "from django.conf import settings; assert not settings.DEBUG; print(settings.DATABASES['default']['HOST'])"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "orderpipe.settings", **example},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "postgres"


@pytest.mark.parametrize("name", SERVERS)
def test_every_server_has_a_healthcheck(name):
    check = SERVICES[name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable")


def test_the_web_healthcheck_calls_healthz_on_its_port():
    test = " ".join(SERVICES["web"]["healthcheck"]["test"])
    assert "/healthz" in test
    assert resolve("/healthz").func.__name__ == "healthz"


def test_the_web_port_is_published_on_the_port_it_listens_on():
    port = env_example()["PORT"]
    assert any(str(mapping).split(":")[-1] == port for mapping in SERVICES["web"]["ports"])


def test_services_start_in_dependency_order():
    for name in APP_SERVICES:
        depends = SERVICES[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a plain list"
        for target, spec in depends.items():
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {target}"
            if expected == "service_healthy":
                assert SERVICES[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"
    assert "postgres" in SERVICES["migrate"]["depends_on"]
    for name in ("web", "relay", "worker"):
        assert "migrate" in SERVICES[name]["depends_on"], name
        assert "rabbitmq" in SERVICES[name]["depends_on"], name
    assert SERVICES["migrate"].get("restart", "no") == "no"


def test_the_worker_scales():
    for name in ("worker", "relay"):
        assert "container_name" not in SERVICES[name], name
        assert "ports" not in SERVICES[name], name


def test_data_lives_in_named_volumes():
    declared = set(COMPOSE.get("volumes") or {})
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("rabbitmq", "/var/lib/rabbitmq"), ("redis", "/data")):
        mounts = [str(v).split(":") for v in SERVICES[name].get("volumes", [])]
        assert any(m[-1] == path and m[0] in declared for m in mounts), f"{name}: {path} is not on a named volume"


def test_the_image_is_slim_runs_as_a_user_and_has_no_dev_dependencies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]
    assert re.match(r"FROM python:3\.11[.\d]*-slim", instructions[0])
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    pip_installs = [line for line in instructions if "pip install" in line]
    assert pip_installs
    assert not any("[dev]" in line or "requirements-dev" in line for line in pip_installs)
    collect = [line for line in instructions if "collectstatic" in line]
    assert collect and "DJANGO_SECRET_KEY=" in collect[0]
    # The throwaway build secret must not become part of the image's environment.
    assert not re.search(r"^ENV[^\n]*DJANGO_SECRET_KEY", dockerfile, re.M)


def test_the_build_context_leaves_out_local_state_and_secrets():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".env"} <= ignored
