"""The Compose files, the Dockerfile and .env.example checked against the code they start, without Docker
(bin/docker-check runs them for real): every command must exist in the image and accept its options, every
variable must be one that settings (or gunicorn.conf.py) reads, every healthcheck must ask the port its role listens
on, no host port is published twice, and the services start in the right order, with data volumes and a worker that
scales. HTTP is gunicorn (`web`), WebSockets daphne (`ws`), both behind the front door (`proxy`, nginx:
deploy/nginx/)."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from daphne.cli import CommandLineInterface
from django.core.management import get_commands, load_command_class

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Services that run this project's image (the others are PostgreSQL, RabbitMQ, Redis and the front door).
APP_SERVICES = sorted(name for name, service in SERVICES.items() if service.get("image") == "orderpipe:latest")
FRONT_DOOR = "proxy"
INFRASTRUCTURE = ["postgres", "rabbitmq", "redis"]
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
FRONT_DOOR_CONF = ROOT / "deploy" / "nginx" / "front-door.conf"
PRODUCTION = yaml.safe_load((ROOT / "docker-compose.production.yml").read_text())
ONE_SHOT = {"migrate"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Variables the Python runtime, the shell or pip read, not the project.
RUNTIME_VARIABLES = {
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PATH",
}


def settings_variables() -> set[str]:
    """Every variable settings.py reads: it reads the environment only through the env_* helpers."""
    source = (ROOT / "orderpipe" / "settings.py").read_text()
    names = set(re.findall(r"\benv_(?:str|bool|int|float|list)\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    assert len(names) > 10, "the env_* helper calls were not found: did settings.py change how it reads env?"
    return names


def gunicorn_variables() -> set[str]:
    """Every variable gunicorn.conf.py reads (through its env_* helpers or os.environ.get)."""
    source = GUNICORN_CONF.read_text()
    names = set(re.findall(r"\b(?:env_int|env_bool|os\.environ\.get)\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']", source))
    assert names, "no environment reads found in gunicorn.conf.py: did it change how it reads env?"
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


def interpolate(value: str, shell: dict[str, str] | None = None) -> str:
    """Compose's own ${NAME:-default} substitution (from the shell or the project's .env, not env_file)."""
    shell = shell or {}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: shell.get(m.group(1)) or m.group(2), value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def published(service: dict[str, Any], shell: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port; a mapping without an address would
    listen on every interface of the host."""
    mappings = []
    for mapping in service.get("ports", []):
        parts = interpolate(str(mapping), shell).split(":")
        assert len(parts) == 3, f"{mapping}: no host address, so every interface of the host publishes it"
        mappings.append((parts[0], parts[1], parts[2]))
    return mappings


def argv(service: dict[str, Any]) -> list[str]:
    """The service's command: its own, else (an app service without one) the image's CMD."""
    command = service.get("command")
    if not command:
        assert service.get("image") == "orderpipe:latest", "an infrastructure service here always names its command"
        return dockerfile_cmd()
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def shell_commands(service: dict[str, Any]) -> list[list[str]]:
    """The commands a service runs, with `sh -c "a && b"` split into [a, b] and Compose's $$ unescaped."""
    args = argv(service)
    if args[:2] == ["sh", "-c"]:
        script = args[2].replace("$$", "$")
        return [shlex.split(part) for part in re.split(r"&&|;", script) if part.strip()]
    return [args]


def expand(command: list[str]) -> list[str]:
    """Substitute $NAME as the container's shell would, from .env.example and the image's ENV (PORT)."""
    values = {"PORT": "8000", **env_example()}
    return [re.sub(r"\$(\w+)", lambda m: values[m.group(1)], part) for part in command]


def dockerfile_stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions (continued lines joined, comments dropped) by stage name ("" before the first
    FROM)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            current = line.split()[-1] if " AS " in line else line
            stages[current] = []
        stages[current].append(" ".join(line.split()))
    return stages


def stage_instructions(stage: str, keyword: str) -> list[str]:
    return [line.removeprefix(keyword).strip() for line in dockerfile_stages()[stage] if line.startswith(keyword)]


def dockerfile_env(stage: str = "app") -> dict[str, str]:
    """The image's ENV values (one `ENV A=1 \\ B=2` instruction, continued over lines)."""
    [line] = stage_instructions(stage, "ENV ")
    return dict(part.split("=", 1) for part in line.split())


def dockerfile_cmd(stage: str = "app") -> list[str]:
    lines = stage_instructions(stage, "CMD ")
    assert len(lines) == 1, f"the Dockerfile's {stage} stage must have one CMD"
    return json.loads(lines[0])


def healthcheck_module() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "bin" / "healthcheck"))


def front_door_upstreams() -> dict[str, tuple[str, int]]:
    """front-door.conf's upstreams: name -> (service, port)."""
    found = re.findall(r"upstream (\w+) \{\s*server ([\w.-]+):(\d+);", FRONT_DOOR_CONF.read_text())
    return {name: (host, int(port)) for name, host, port in found}


def check_gunicorn_command(name: str, options: list[str]) -> None:
    """gunicorn's own parser accepts the options; the config file they name exists and names a WSGI app that
    imports."""
    from gunicorn.config import Config

    args = Config().parser().parse_args(options)
    assert args.config, f"{name}: gunicorn runs without its config file"
    path = ROOT / args.config
    assert path == GUNICORN_CONF and path.is_file(), f"{name}: no config file {args.config}"
    target = runpy.run_path(str(path)).get("wsgi_app") or (args.args or [None])[0]
    assert target, f"{name}: neither the command nor {args.config} names the WSGI app"
    module, _, attribute = target.partition(":")
    app = getattr(importlib.import_module(module), attribute or "application")
    assert callable(app), target


def test_the_compose_file_has_every_role():
    assert set(SERVICES) == {"postgres", "rabbitmq", "redis", "migrate", "web", "ws", "relay", "worker", "proxy"}
    assert APP_SERVICES == ["migrate", "relay", "web", "worker", "ws"]
    assert SERVICES[FRONT_DOOR]["build"] == {"context": ".", "target": "front"}
    for name in APP_SERVICES:
        assert SERVICES[name]["build"] == {"context": ".", "target": "app"}, name
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
            args = CommandLineInterface().parser.parse_args(expand(command[1:]))  # exits on an unknown option
            module, _, attribute = args.application.partition(":")
            assert getattr(importlib.import_module(module), attribute) is not None, args.application
        elif command[0] == "gunicorn":
            check_gunicorn_command(name, expand(command[1:]))
        else:
            pytest.fail(f"{name}: unexpected command {command}")


def test_each_role_runs_what_the_design_says():
    assert [c[:3] for c in shell_commands(SERVICES["migrate"])] == [
        ["python", "manage.py", "migrate"],
        ["python", "manage.py", "seed_demo"],
    ]
    # HTTP: the image's CMD, gunicorn with the config file, which binds $PORT (test_gunicorn_conf_reads_its_variables).
    assert "command" not in SERVICES["web"], "the web server's command is written once, in the Dockerfile's CMD"
    assert shell_commands(SERVICES["web"]) == [["exec", "gunicorn", "-c", "gunicorn.conf.py"]]
    # WebSockets: daphne, on the port the front door sends /ws/ to.
    ws = shell_commands(SERVICES["ws"])
    assert len(ws) == 1 and ws[0][:2] == ["exec", "daphne"] and ws[0][-1] == "orderpipe.asgi:application"
    assert argv(SERVICES["relay"])[:3] == ["python", "manage.py", "run_relay"]
    assert argv(SERVICES["worker"])[:3] == ["python", "manage.py", "run_worker"]


def test_every_variable_is_one_that_settings_or_gunicorn_reads():
    known = settings_variables() | gunicorn_variables()
    example = env_example()
    unknown = set(example) - known
    assert not unknown, f".env.example sets variables neither settings.py nor gunicorn.conf.py reads: {sorted(unknown)}"
    for name in APP_SERVICES:
        unknown = set(environment(SERVICES[name])) - known
        assert not unknown, f"{name} sets variables neither settings.py nor gunicorn.conf.py reads: {sorted(unknown)}"
    dockerfile_env = set(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]*)=", (ROOT / "Dockerfile").read_text(), re.M))
    unknown = dockerfile_env - known - RUNTIME_VARIABLES - {"DJANGO_SECRET_KEY"}
    assert not unknown, (
        f"the Dockerfile sets variables neither settings.py nor gunicorn.conf.py reads: {sorted(unknown)}"
    )
    # Every variable a command expands comes from .env.example or the image.
    for name in APP_SERVICES:
        for command in shell_commands(SERVICES[name]):
            expand(command)  # KeyError on a variable nobody sets


def test_gunicorn_conf_reads_its_variables():
    """gunicorn itself resolves the config file (and loads the app) with the example's values and with others."""

    def resolved(**env: str) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in {"WEB_BIND", "PORT"}}
        result = subprocess.run(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "--print-config"],
            cwd=ROOT,
            env={**inherited, "DJANGO_SETTINGS_MODULE": "orderpipe.settings", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = (line.partition(" = ") for line in result.stdout.splitlines() if " = " in line)
        return {key.strip(): value.strip() for key, _, value in lines}

    example = env_example()
    # As Compose's `web` runs it: the image's ENV, then .env.example.
    config = resolved(**{**dockerfile_env(), **{k: example[k] for k in ("PORT", "WEB_WORKERS", "WEB_THREADS")}})
    assert config["wsgi_app"] == "orderpipe.wsgi:application"
    assert config["worker_class"] == "gthread"
    # A container listens on its own interface (which host address publishes the port is Compose's choice).
    assert config["bind"] == f"['0.0.0.0:{example['PORT']}']"
    assert (config["workers"], config["threads"]) == (example["WEB_WORKERS"], example["WEB_THREADS"])
    assert config["accesslog"] == "None" and config["errorlog"] == "-"
    assert int(config["graceful_timeout"]) < 10, "gunicorn must finish before Compose's 10 s stop grace period"

    config = resolved(PORT="9123", WEB_WORKERS="3", WEB_THREADS="7", WEB_ACCESS_LOG="true", WEB_BIND="0.0.0.0")
    assert config["bind"] == "['0.0.0.0:9123']"
    assert (config["workers"], config["threads"], config["accesslog"]) == ("3", "7", "-")

    # Outside the image (`make run`, a plain `gunicorn -c gunicorn.conf.py`): loopback only.
    assert resolved()["bind"] == "['127.0.0.1:8000']"
    assert resolved(WEB_BIND="")["bind"] == "['127.0.0.1:8000']"


FAKE_PYTHON = """#!/bin/sh
echo "$(basename "$0") $*" >> "$ARGV_LOG"
"""


@pytest.mark.parametrize(("bind", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_make_run_binds_loopback_unless_told_otherwise(tmp_path, bind, expected):
    """bin/run-all (what `make run` starts) hands WEB_BIND, loopback by default, to the supervisor, which gives it to
    both servers: gunicorn's -b and daphne's -b (see the supervisor's own argv below)."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "argv.log"
    env = {k: v for k, v in os.environ.items() if k != "WEB_BIND"}
    env.update(PYTHON=str(fake), ARGV_LOG=str(log), PORT="9200")
    if bind is not None:
        env["WEB_BIND"] = bind
    subprocess.run(
        [str(ROOT / "bin" / "run-all")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True, timeout=30
    )
    [argv] = [line.split()[1:] for line in log.read_text().splitlines()]
    assert argv == ["manage.py", "supervise", "--bind", expected, "--port", "9200"]
    # Makefile's `run` passes its own default on.
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^WEB_BIND \?= 127\.0\.0\.1$", makefile, re.M)
    assert "WEB_BIND=$(WEB_BIND)" in makefile


def test_the_supervisor_binds_both_servers_where_it_is_told():
    from worker.supervisor import Supervisor

    supervisor = Supervisor(python="/venv/bin/python", bind="127.0.0.1", port=9200)
    web, ws = supervisor.argv("web"), supervisor.argv("ws")
    assert web[web.index("-b") + 1] == "127.0.0.1:9200"
    assert (ws[ws.index("-b") + 1], ws[ws.index("-p") + 1]) == ("127.0.0.1", "9201")


def test_every_app_service_reads_env_example():
    for name in APP_SERVICES:
        files = SERVICES[name]["env_file"]
        paths = [f if isinstance(f, str) else f["path"] for f in files]
        assert ".env.example" in paths, name
        # A local .env may override the example, but must not be required for the first run.
        for entry in files:
            if not isinstance(entry, str) and entry["path"] == ".env":
                assert entry.get("required") is False


def test_every_app_service_demands_its_own_secret_key():
    """No key is published with the repository; Compose stops with a message until .env (or the shell) has one."""
    for name in APP_SERVICES:
        key = (SERVICES[name].get("environment") or {}).get("DJANGO_SECRET_KEY", "")
        assert key.startswith("${DJANGO_SECRET_KEY:?") and "openssl rand" in key, name


def test_the_example_configuration_loads_and_points_at_the_compose_services():
    example = env_example()
    for url, host in (("DATABASE_URL", "postgres"), ("AMQP_URL", "rabbitmq"), ("REDIS_URL", "redis")):
        assert f"@{host}:" in example[url] or f"//{host}:" in example[url], url
    pg = environment(SERVICES["postgres"])
    assert example["DATABASE_URL"].startswith(f"postgres://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@")
    assert example["DATABASE_URL"].endswith(f"/{pg['POSTGRES_DB']}")
    mq = environment(SERVICES["rabbitmq"])
    assert example["AMQP_URL"].startswith(f"amqp://{mq['RABBITMQ_DEFAULT_USER']}:{mq['RABBITMQ_DEFAULT_PASS']}@")
    # The settings accept these values once the published demo key is replaced, as the file asks: a production-mode
    # start refuses that key (docs/05-security.md).
    code = (
        "from django.conf import settings; assert not settings.DEBUG; "
        "print(settings.DATABASES['default']['HOST'], settings.WEBSOCKET_PORT)"
    )

    def load(**overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={"DJANGO_SETTINGS_MODULE": "orderpipe.settings", **example, **overrides},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert "DJANGO_SECRET_KEY" not in example, "a key in the repository is a published key"
    assert "published demo key" in load().stderr  # without one, the settings' dev key, refused outside DEBUG
    result = load(DJANGO_SECRET_KEY="a-real-key-" + "x" * 40)
    assert result.returncode == 0, result.stderr
    # The pages open their sockets on their own origin: the front door's, which sends /ws/ to daphne.
    assert result.stdout.split() == ["postgres", "None"]


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_every_infrastructure_service_has_a_healthcheck(name):
    check = SERVICES[name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable")


@pytest.mark.parametrize("stage", ["app", "front"])
def test_the_images_have_their_own_healthcheck(stage):
    """The app's and the front door's healthchecks are the image's (Compose keeps them: no service overrides them)."""
    [check] = stage_instructions(stage, "HEALTHCHECK ")
    command = json.loads(check[check.index("CMD ") + 4 :])
    if stage == "app":
        assert command == ["python", "bin/healthcheck"]
        assert (ROOT / "bin" / "healthcheck").is_file()
    else:
        assert "/dev/tcp/127.0.0.1/80" in command[-1] and "/healthz" in command[-1]
        assert re.search(r"^\s*listen 80 default_server;", FRONT_DOOR_CONF.read_text(), re.M)
    for name in [*APP_SERVICES, FRONT_DOOR]:
        assert "healthcheck" not in SERVICES[name], f"{name} overrides the image's healthcheck"


def listening_port(name: str) -> int | None:
    """The port the role of an app service listens on, from its own command and configuration."""
    [command] = shell_commands(SERVICES[name])[-1:]
    command = expand([part for part in command if part != "exec"])
    env = {**dockerfile_env(), **env_example()}
    if command[0] == "gunicorn":
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            return int(runpy.run_path(str(GUNICORN_CONF))["bind"].rpartition(":")[2])
    if command[0] == "daphne":
        return CommandLineInterface().parser.parse_args(command[1:]).port
    for role, variable in (("run_relay", "RELAY_METRICS_PORT"), ("run_worker", "WORKER_METRICS_PORT")):
        if role in command:
            assert "--metrics-port" not in command, f"{name}: the metrics port comes from {variable}"
            return int(env[variable])
    return None


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_roles_healthcheck_asks_the_port_it_listens_on(name):
    """bin/healthcheck reads the role from PID 1's command line (the service's command after `exec`, console
    scripts run by the venv's python) and asks its port: the port that role's own configuration listens on."""
    commands = shell_commands(SERVICES[name])
    pid_1 = [part for part in commands[-1] if part != "exec"]
    if pid_1[0] in {"gunicorn", "daphne"}:
        pid_1 = ["/opt/venv/bin/python", f"/opt/venv/bin/{pid_1[0]}", *pid_1[1:]]
    url = healthcheck_module()["probe_url"](expand(pid_1), {**dockerfile_env(), **env_example()})
    port = listening_port(name)
    if name in ONE_SHOT:
        assert url is None and port is None
        return
    assert url == f"http://127.0.0.1:{port}/{'metrics' if name in {'relay', 'worker'} else 'healthz'}", name


def test_the_metrics_ports_come_from_the_environment_and_differ():
    """Every role its own port, so that they may share a host network; relay and worker read theirs from settings."""
    env = dockerfile_env()
    ports = {
        "web": listening_port("web"),
        "ws": listening_port("ws"),
        "relay": int(env["RELAY_METRICS_PORT"]),
        "worker": int(env["WORKER_METRICS_PORT"]),
    }
    assert len(set(ports.values())) == len(ports), ports
    exposed = {int(port) for line in stage_instructions("app", "EXPOSE ") for port in line.split()}
    assert set(ports.values()) <= exposed
    code = "from django.conf import settings; print(settings.RELAY_METRICS_PORT, settings.WORKER_METRICS_PORT)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "orderpipe.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == [str(ports["relay"]), str(ports["worker"])], result.stderr


def test_the_front_door_sends_to_the_ports_web_and_ws_listen_on():
    assert front_door_upstreams() == {
        "orderpipe_web": ("web", listening_port("web")),
        "orderpipe_ws": ("ws", listening_port("ws")),
    }
    # The front door publishes the port it listens on.
    assert [container for _, _, container in published(SERVICES[FRONT_DOOR])] == ["80"]
    assert SERVICES[FRONT_DOOR]["depends_on"] == {
        "web": {"condition": "service_healthy"},
        "ws": {"condition": "service_healthy"},
    }


def test_only_the_front_door_and_rabbitmqs_ui_are_published_on_the_hosts_loopback():
    publishing = {name: service for name, service in SERVICES.items() if service.get("ports")}
    assert set(publishing) == {FRONT_DOOR, "rabbitmq"}, "the app services are reached through the front door only"
    for name, service in publishing.items():
        assert {address for address, _, _ in published(service)} == {"127.0.0.1"}, name
        assert {address for address, _, _ in published(service, {"PUBLISH_ADDRESS": "0.0.0.0"})} == {"0.0.0.0"}
    assert ("127.0.0.1", "15672", "15672") in published(SERVICES["rabbitmq"])
    assert ("127.0.0.1", "8000", "80") in published(SERVICES[FRONT_DOOR])


@pytest.mark.parametrize("files", [["base"], ["base", "cluster"], ["base", "production"]])
def test_no_host_port_is_published_twice(files):
    """Compose appends an override's ports to the base file's: two services (or one twice) on one host port would
    fail at `up`."""
    layers = {"base": SERVICES, "cluster": CLUSTER["services"], "production": PRODUCTION["services"]}
    seen: dict[tuple[str, str], str] = {}
    for layer in files:
        for name, service in layers[layer].items():
            for address, port, _container in published(service):
                assert (address, port) not in seen, f"{name} and {seen[(address, port)]} both publish {port}"
                seen[(address, port)] = name


def test_the_rabbitmq_password_comes_from_the_environment():
    """Not a literal in the Compose file: RABBITMQ_PASSWORD (from .env) sets it; the default is the dev one that
    .env.example's URLs use, documented as dev-only."""
    raw = SERVICES["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"]
    assert raw.startswith("${RABBITMQ_PASSWORD:-"), raw
    assert interpolate(raw, {"RABBITMQ_PASSWORD": "s3cret"}) == "s3cret"
    assert "RABBITMQ_PASSWORD" in (ROOT / "docs" / "07-operations-and-docker.md").read_text()


def test_the_image_runs_the_web_command_by_default():
    assert argv(SERVICES["web"]) == dockerfile_cmd()
    assert dockerfile_cmd("front") == ["nginx", "-g", "daemon off;"]


def test_services_start_in_dependency_order():
    for name in APP_SERVICES:
        depends = SERVICES[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a plain list"
        for target, spec in depends.items():
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {target}"
            if expected == "service_healthy":
                image_has_one = target in APP_SERVICES and stage_instructions("app", "HEALTHCHECK ")
                assert SERVICES[target].get("healthcheck") or image_has_one, (
                    f"{name} waits for {target}: no healthcheck"
                )
    assert "postgres" in SERVICES["migrate"]["depends_on"]
    for name in ("web", "ws", "relay", "worker"):
        assert "migrate" in SERVICES[name]["depends_on"], name
        assert "rabbitmq" in SERVICES[name]["depends_on"], name
    assert SERVICES["ws"]["depends_on"] == SERVICES["web"]["depends_on"]
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
    stages = dockerfile_stages()
    assert list(stages) == ["", "build", "front", "app"], "the app is the last stage: the default target"
    assert stages[""] == ["ARG NGINX_IMAGE=nginx:1.27-bookworm"]
    for stage in ("build", "app"):
        assert re.match(r"FROM python:3\.11[.\d]*-slim AS ", stages[stage][0]), stage
    assert stages["front"][0] == "FROM ${NGINX_IMAGE} AS front"
    users = stage_instructions("app", "USER ")
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    # A regular user's uid (useradd warns about a --system user outside the system range, 100-999).
    [useradd] = [line for line in stage_instructions("app", "RUN ") if "useradd" in line]
    assert "--uid 10001" in useradd and "--system" not in useradd
    pip_installs = [line for line in stage_instructions("build", "RUN ") if "pip " in line and " install" in line]
    assert pip_installs
    assert not any("[dev]" in line or "requirements-dev" in line for line in pip_installs)
    assert not [line for line in stage_instructions("app", "RUN ") if "pip " in line], "the app stage installs nothing"
    collect = [line for line in stage_instructions("build", "RUN ") if "collectstatic" in line]
    assert collect and "DJANGO_SECRET_KEY=" in collect[0]
    # The throwaway build secret must not become part of the image's environment.
    assert not re.search(r"^ENV[^\n]*DJANGO_SECRET_KEY", dockerfile, re.M)


def dockerignored(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    patterns = [p for p in patterns if not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p.lstrip("/")) or path.split("/")[0] == p.lstrip("/") for p in patterns)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_image_can_run_every_command(name):
    """Each command's program is installed by the image's `pip install .` (a runtime dependency, not a dev one),
    and each file it names reaches the image (is not left out of the build context)."""
    runtime = {re.split(r"[<>=!\[ ;]", requirement)[0].lower() for requirement in PYPROJECT["project"]["dependencies"]}
    scripts = {
        entry.name: entry.dist.name.lower() for entry in importlib.metadata.entry_points(group="console_scripts")
    }
    for command in shell_commands(SERVICES[name]):
        command = [part for part in command if part != "exec"]
        if command[0] == "python":
            program = command[1]
            assert (ROOT / program).is_file() and not dockerignored(program), f"{name}: {program} is not in the image"
        else:
            assert scripts.get(command[0]) in runtime, f"{name}: {command[0]} is not installed by the image"
        for part in command[1:]:
            if re.fullmatch(r"[\w/.-]+\.(py|conf)", part):
                assert (ROOT / part).is_file() and not dockerignored(part), f"{name}: {part} is not in the image"
    for path in ("bin/healthcheck", "deploy/nginx/front-door.conf", "deploy/nginx/orderpipe.conf"):
        assert not dockerignored(path), path


def test_the_build_context_leaves_out_local_state_and_secrets():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".env"} <= ignored
    assert dockerignored(".env") and dockerignored(".git/config") and not dockerignored("manage.py")


# ---------------------------------------------------------------- the teaching and the production setups


def test_the_teaching_setup_turns_the_sandbox_on_explicitly():
    for name in APP_SERVICES:
        assert environment(SERVICES[name])["ORDERPIPE_SANDBOX"] == "true", name
        assert environment(SERVICES[name])["ORDERPIPE_NUM_PROXIES"] == "1", f"{name}: the front door is one proxy"


def test_the_production_file_turns_the_sandbox_off_and_check_deploy_is_clean():
    production = PRODUCTION["services"]
    assert set(production) == {*APP_SERVICES, FRONT_DOOR}, "it overrides services the base file has, no others"
    for name in APP_SERVICES:
        env = {**environment(SERVICES[name]), **environment(production[name])}
        assert env["ORDERPIPE_SANDBOX"] == "false", name
    env = {**env_example(), **environment(production["web"]), "DJANGO_SECRET_KEY": "a-real-key-" + "y" * 40}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "orderpipe.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # HTTPS at the front door: its server block, with the same policy as the plain one.
    mounts = [str(v).split(":") for v in production[FRONT_DOOR]["volumes"]]
    assert ["./deploy/nginx/tls.conf", "/etc/nginx/conf.d/tls.conf", "ro"] in mounts
    tls = (ROOT / "deploy" / "nginx" / "tls.conf").read_text()
    assert "listen 443 ssl" in tls and "include /etc/nginx/orderpipe/orderpipe.conf;" in tls
    assert "X-Forwarded-Proto $scheme" in (ROOT / "deploy" / "nginx" / "orderpipe.conf").read_text()


# ---------------------------------------------------------------- docker-compose.cluster.yml (opt-in, on top)

CLUSTER = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
CLUSTER_NODES = ["rabbitmq", "rabbitmq2", "rabbitmq3"]


def cluster_service(name: str) -> dict[str, Any]:
    """A service as Compose runs it with both files: the cluster file's keys over the base file's (mappings such
    as `environment` merged, the rest replaced)."""
    merged = dict(SERVICES.get(name, {}))
    for key, value in CLUSTER["services"].get(name, {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def test_the_cluster_file_runs_three_rabbitmq_nodes_with_one_cookie():
    nodes = [name for name, service in CLUSTER["services"].items() if "rabbitmq" in str(service.get("image"))]
    assert nodes == CLUSTER_NODES
    cookies = set()
    for name in CLUSTER_NODES:
        service = cluster_service(name)
        assert service["hostname"] == name, f"{name}: its node name is rabbit@<hostname>"
        assert service["healthcheck"]["test"], name
        cookies.add(environment(service).get("RABBITMQ_ERLANG_COOKIE"))
        mounts = [str(v).split(":") for v in service["volumes"]]
        data = [m for m in mounts if m[1] == "/var/lib/rabbitmq"]
        assert data and data[0][0] in set(COMPOSE["volumes"]) | set(CLUSTER["volumes"]), f"{name}: data volume"
    assert len(cookies) == 1 and None not in cookies, "the nodes must share one Erlang cookie"
    # The second and third join the first, so they start after it.
    for name in CLUSTER_NODES[1:]:
        assert cluster_service(name)["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}


def test_the_cluster_config_is_mounted_and_names_the_three_nodes():
    for name in CLUSTER_NODES:
        mounts = [str(v).split(":") for v in cluster_service(name)["volumes"]]
        configs = [m for m in mounts if m[1].startswith("/etc/rabbitmq/conf.d/")]
        assert len(configs) == 1, f"{name}: the cluster config is not mounted"
        path = ROOT / configs[0][0]
        assert path.is_file(), f"{name}: {configs[0][0]} does not exist"
        conf = dict(
            (part.strip() for part in line.split("=", 1))
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
        named = {value for key, value in conf.items() if key.startswith("cluster_formation.classic_config.nodes.")}
        assert named == {f"rabbit@{node}" for node in CLUSTER_NODES}


def test_every_app_service_gets_the_three_node_amqp_url():
    for name in APP_SERVICES:
        env = environment(cluster_service(name))
        assert "AMQP_URL" in env, f"{name} keeps the single-node AMQP_URL of .env.example"
        urls = [urlsplit(url) for url in env["AMQP_URL"].split(",")]
        assert sorted(url.hostname for url in urls) == CLUSTER_NODES, name
        for url in urls:
            node = environment(cluster_service(url.hostname))
            assert url.scheme == "amqp" and url.port == 5672, name
            assert (url.username, url.password) == (node["RABBITMQ_DEFAULT_USER"], node["RABBITMQ_DEFAULT_PASS"])


def test_the_cluster_file_adds_no_service_the_base_file_lacks_but_the_nodes():
    # An override of an app service that the base file does not define would start a half-configured container.
    assert set(CLUSTER["services"]) - set(SERVICES) == set(CLUSTER_NODES[1:])
