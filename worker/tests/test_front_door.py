"""The front door (deploy/nginx/), without Docker: Debian's nginx runs Compose's front-door.conf, with loopback
addresses for web and ws, in front of a real gunicorn (2 workers x 4 threads, as Compose runs it) and daphne.

Slow clients: gunicorn serving the network directly was starved by clients that send their bodies one byte every
two seconds (each holds a thread until its body is in); nginx reads bodies first, so they never reach it."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from django.test import Client

from orders.tests.factories import StaffFactory
from worker.tests.processes import ROOT, GunicornWeb, Process, Web, free_port, service_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NGINX = "/usr/sbin/nginx"
FRONT_DOOR_CONF = ROOT / "deploy" / "nginx" / "front-door.conf"
POLICY_CONF = ROOT / "deploy" / "nginx" / "orderpipe.conf"
SLOW_CLIENTS = 16
PROBE_TIMEOUT = 1.0  # seconds: the criterion, a probe through the front door answers within it


def nginx_binary() -> str:
    """Debian's nginx: installed when missing and this is root on Debian (as .ci/run does), else the test skips."""
    if not Path(NGINX).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], env=env, capture_output=True, timeout=300)
    if not Path(NGINX).exists():
        pytest.skip(f"no nginx at {NGINX} (apt-get install nginx)")
    return NGINX


def front_door_config(directory: Path, *, port: int, web_port: int, ws_port: int) -> Path:
    """Compose's front-door.conf with this machine's addresses, in a main config of its own (paths in `directory`)."""
    site = FRONT_DOOR_CONF.read_text()
    for compose, here in (
        ("server web:8000;", f"server 127.0.0.1:{web_port};"),
        ("server ws:8001;", f"server 127.0.0.1:{ws_port};"),
        ("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;"),
        ("root /srv/orderpipe;", f"root {directory / 'srv'};"),
        ("include /etc/nginx/orderpipe/orderpipe.conf;", f"include {POLICY_CONF};"),
    ):
        assert site.count(compose) == 1, f"front-door.conf no longer has {compose!r}: update this test with it"
        site = site.replace(compose, here)
    # The static files as the front door's image has them (collected there; the repository's own here).
    (directory / "srv").mkdir()
    (directory / "srv" / "static").symlink_to(ROOT / "static")
    # Root here (CI): workers as root too, since the temporary directories are the test's own.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"{kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = directory / "nginx.conf"
    config.write_text(
        f"""daemon off;
{user}
worker_processes 1;
pid {directory / "nginx.pid"};
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
include /etc/nginx/mime.types;
access_log off;
{temp}
{site}
}}
"""
    )
    return config


@pytest.fixture(scope="module")
def front_door(django_db_setup, django_db_blocker, tmp_path_factory):
    """gunicorn (as Compose runs it), daphne, and nginx in front of both: (nginx's URL, gunicorn's URL)."""
    nginx = nginx_binary()
    log_dir = tmp_path_factory.mktemp("front-door")
    with django_db_blocker.unblock():
        http = GunicornWeb(log_dir=log_dir, workers=2, threads=4, env=service_env()).start()
        ws = Web(log_dir=log_dir).start()
    port = free_port()
    config = front_door_config(log_dir, port=port, web_port=http.port, ws_port=ws.port)
    check = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proxy = Process("nginx", [nginx, "-c", str(config)], log_dir=log_dir).start()
    try:
        http.wait_ready()
        ws.wait_ready()
        proxy.wait_http(f"http://127.0.0.1:{port}/static/css/base.css")
        yield f"http://127.0.0.1:{port}", http.url
    finally:
        for process in (proxy, http, ws):
            process.stop()


def server_sockets(port: int) -> tuple[int | None, int]:
    """What 127.0.0.1:`port`'s server holds (/proc/net/tcp): the connections its listening socket has not accepted
    yet (a listening socket's rx_queue is its accept queue; None when nothing listens there), and the connections it
    has accepted and read everything sent on (rx_queue 0)."""
    waiting, read = None, 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, unread = fields[1], fields[3], int(fields[4].split(":")[1], 16)
        if int(local.split(":")[1], 16) != port:
            continue
        if state == "0A":  # LISTEN
            waiting = (waiting or 0) + unread
        elif state == "01" and unread == 0:  # ESTABLISHED
            read += 1
    return waiting, read


@contextmanager
def slow_posts(url: str, count: int, *, taken: int) -> Iterator[list[socket.socket]]:
    """`count` connections each sending POST /api/orders/ with Content-Length: 100000, one body byte every 2 s; yields
    once the server has accepted them all and is reading `taken` of them (has read their head and first byte)."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /api/orders/ HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    sockets = []
    stop = threading.Event()
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(head + b"{")
        sockets.append(sock)

    def drip() -> None:
        while not stop.wait(2):
            for sock in sockets:
                with suppress(OSError):  # one the server has dropped
                    sock.sendall(b" ")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:

        def in_the_server() -> bool:
            waiting, read = server_sockets(int(port))
            return waiting == 0 and read >= taken

        assert wait_until(in_the_server, 10), f"(not accepted, read): {server_sockets(int(port))}"
        yield sockets
    finally:
        stop.set()
        dripper.join()
        for sock in sockets:
            sock.close()


def probe(url: str, count: int = 8) -> list[float | None]:
    """GET /healthz `count` times, each with a PROBE_TIMEOUT client timeout: seconds taken, None for no answer."""
    timings: list[float | None] = []
    for _ in range(count):
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=PROBE_TIMEOUT) as response:
                response.read()
                ok = response.status == 200
        except (OSError, urllib.error.URLError):
            ok = False
        timings.append(time.monotonic() - started if ok else None)
        time.sleep(0.25)  # probes spread over the slow clients' drip, not fired in one burst
    return timings


def describe(timings: list[float | None]) -> str:
    answered = [t for t in timings if t is not None]
    if not answered:
        return f"0/{len(timings)} answered within {PROBE_TIMEOUT:g} s"
    return (
        f"{len(answered)}/{len(timings)} answered within {PROBE_TIMEOUT:g} s, "
        f"median {1000 * statistics.median(answered):.0f} ms, max {1000 * max(answered):.0f} ms"
    )


def test_slow_clients_do_not_starve_the_app_behind_the_front_door(front_door):
    front, gunicorn = front_door
    with slow_posts(front, SLOW_CLIENTS, taken=SLOW_CLIENTS):  # nginx reads every one
        through_the_front_door = probe(front)
    print(f"\n/healthz through the front door, {SLOW_CLIENTS} slow clients on it: {describe(through_the_front_door)}")
    # For comparison (printed, not asserted: how badly depends on timing): the same clients on gunicorn itself.
    with slow_posts(gunicorn, SLOW_CLIENTS, taken=0):  # accepted; how many its threads then hold varies
        direct = probe(gunicorn, count=4)
    print(f"/healthz on gunicorn directly, {SLOW_CLIENTS} slow clients on it: {describe(direct)}")
    assert None not in through_the_front_door, describe(through_the_front_door)


def test_the_front_door_serves_static_files_itself(front_door):
    front, _gunicorn = front_door
    with urllib.request.urlopen(f"{front}/static/js/live.js", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Server"] == "nginx"  # not gunicorn (WhiteNoise) behind it
        assert response.read() == (ROOT / "static" / "js" / "live.js").read_bytes()
    with urllib.request.urlopen(f"{front}/healthz", timeout=5) as response:
        assert response.status == 200 and b"alive" in response.read()


def test_the_front_door_refuses_a_body_over_its_limit_before_reading_it(front_door):
    front, _gunicorn = front_door
    request = urllib.request.Request(
        f"{front}/api/orders/", data=b"x" * (4 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 413
    assert refused.value.headers["Server"] == "nginx"


def test_the_front_door_carries_websockets_to_daphne(front_door):
    front, _gunicorn = front_door
    staff = StaffFactory(username="front-door-staff", password="front-door-password")
    client = Client()
    client.force_login(staff)
    session = client.cookies["sessionid"].value
    host, port = front.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /ws/pipeline/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {front}\r\n"
            f"Cookie: sessionid={session}\r\n\r\n".encode()
        )
        status = sock.makefile("rb").readline().decode()
    assert status.startswith("HTTP/1.1 101"), status
