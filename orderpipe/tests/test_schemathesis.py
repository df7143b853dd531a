"""The API against its own OpenAPI schema, fuzzed from outside as an attacker would: schemathesis's command line
(`--checks all`, a fixed seed, a few examples per operation) against a production-mode gunicorn (DEBUG off, the
sandbox on so its endpoints are in the schema), once anonymous and once as staff with a session and its CSRF token.
Every check must pass: no 5xx, every status, header and body as documented, undocumented methods 405, bad input
refused. The controls that stop or cut the pipeline's processes (kill, outage, node) are left out: they would act on
this machine's services, and orderpipe/dashboard/tests cover them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from orders.tests.factories import ProductFactory, StaffFactory
from worker.broker import Publisher, connect
from worker.tests.processes import ROOT, GunicornWeb, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "schemathesis-staff-password"
EXCLUDED = r"^/api/controls/(kill|outage|node)/$"
SCHEMATHESIS = str(Path(sys.executable).parent / "st")
ARTIFACTS = ROOT / "artifacts" / "schemathesis"


@pytest.fixture
def server(tmp_path):
    web = GunicornWeb(log_dir=tmp_path, env=service_env(DJANGO_DEBUG="false", ORDERPIPE_SANDBOX="true")).start()
    try:
        web.wait_ready()
        yield web
    finally:
        web.stop()


def staff_session(base: str) -> requests.Session:
    """A staff login through the admin's form, as a browser does it: the session cookie and the CSRF token."""
    StaffFactory(username="fuzz-staff", password=PASSWORD)
    session = requests.Session()
    session.get(f"{base}/admin/login/", timeout=10).raise_for_status()
    answer = session.post(
        f"{base}/admin/login/",
        data={"username": "fuzz-staff", "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text[:500]
    return session


# Answers to schema-valid requests that data, not the schema, decides: an unknown sku or product (400), a key used
# before with another body (422), a burst over the stock (409, already among schemathesis's defaults). (Set for
# every operation: schemathesis 4.32 applied an `[[operations]]` override to all of them.)
BUSINESS_RULES = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]
"""


def fuzz(who: str, schema: Path, base: str, *, session: requests.Session | None = None) -> str:
    """One bounded schemathesis run; returns its output (also kept in artifacts/schemathesis/<who>.txt)."""
    config = schema.parent / f"{who}.toml"
    env = dict(os.environ)
    lines = ["[auth]", "auto-signup = false"]
    if session is not None:
        lines += ["[auth.openapi.cookieAuth]", f'api_key = "{session.cookies["sessionid"]}"']
        env |= {"SCHEMATHESIS_HOOKS": "orderpipe.tests.schemathesis_hooks"}
        env |= {"ORDERPIPE_FUZZ_CSRF_TOKEN": session.cookies["csrftoken"]}
    config.write_text("\n".join(lines) + "\n" + BUSINESS_RULES)
    argv = [SCHEMATHESIS, "--config-file", str(config), "--no-color", "run", str(schema), "--url", base]
    argv += ["--checks", "all", "--seed", "20260", "--max-examples", "5", "--workers", "1"]
    argv += ["--exclude-path-regex", EXCLUDED, "--request-timeout", "10"]
    # In the test's directory, where schemathesis leaves its cache; the hooks module is found from the repository.
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(argv, cwd=schema.parent, env=env, capture_output=True, text=True, timeout=600)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{who}.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, (
        f"schemathesis as {who} failed (artifacts/schemathesis/{who}.txt):\n{run.stdout[-20000:]}"
    )
    return run.stdout


def test_the_api_passes_every_schemathesis_check_anonymous_and_as_staff(server, tmp_path):
    # This run's queues, as a running relay or worker would have declared them (the poison control publishes).
    publisher = Publisher(connect())
    publisher.declare_topology()
    publisher.close()
    for sku in ("BOOK-001", "MUG-002"):
        ProductFactory(sku=sku, stock=100_000)
    staff = staff_session(server.url)
    schema = tmp_path / "schema.json"
    answer = staff.get(f"{server.url}/api/schema/?format=json", timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    schema.write_bytes(answer.content)

    for who, session in (("anonymous", None), ("staff", staff)):
        output = fuzz(who, schema, server.url, session=session)
        print(f"---- schemathesis as {who}\n{output[-1500:]}")
