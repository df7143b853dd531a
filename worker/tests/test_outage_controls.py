"""The "What happens when…" endpoints (orderpipe/dashboard/outages.py) on their own: refused without a supervisor, clear
400s on bad input, a request filed for the supervisor when one runs, and a poison message that really lands in the
dead-letter queue. The supervisor carrying requests out is tested against a real `supervise` in test_supervisor.py."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from orders import sandbox
from orders.models import Order, OrderStatus, Payment
from orders.sandbox.faults import Faults
from orders.tests.factories import StaffFactory
from worker.models import SupervisedProcess, SupervisorRequest
from worker.relay import relay_once
from worker.replay import replay_dead_letters
from worker.tests.factories import ServiceLinkFactory, SupervisedProcessFactory
from worker.tests.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff() -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(StaffFactory(username="ops"))
    client.get("/")
    return client


def post(client: APIClient, url: str, body: dict):
    return client.post(
        url, data=json.dumps(body), content_type="application/json", HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value
    )


@pytest.fixture
def a_supervisor_runs():
    """The rows a running supervisor keeps fresh (worker/supervisor.py's heartbeat, worker/links.py)."""
    SupervisedProcessFactory(name="worker-1", pid=1)
    SupervisedProcessFactory(name="relay", role="relay", pid=2)
    for name in ("postgresql", "rabbitmq", "redis"):
        ServiceLinkFactory(name=name)


def test_without_a_supervisor_the_controls_answer_409_and_file_nothing(staff):
    response = post(staff, "/api/controls/kill/", {"process": "worker-1"})
    assert response.status_code == 409
    assert response.json() == {
        "detail": "needs make run's supervisor (manage.py supervise); not running here",
        "code": "no_supervisor",
    }
    assert post(staff, "/api/controls/outage/", {"service": "redis", "action": "cut"}).status_code == 409
    assert not SupervisorRequest.objects.exists()
    # The page says so too: the controls are shown disabled with the reason.
    state = staff.get("/api/pipeline/").json()["supervisor"]
    assert state["available"] is False and "make run" in state["reason"]


def test_bad_input_is_a_clear_400(staff, a_supervisor_runs):
    response = post(staff, "/api/controls/kill/", {"process": "worker-7"})
    assert response.status_code == 400
    assert "worker-7" in json.dumps(response.json()) and "worker-1" in json.dumps(response.json())
    assert post(staff, "/api/controls/kill/", {"process": "worker-1", "signal": "SIGHUP"}).status_code == 400
    assert post(staff, "/api/controls/kill/", {}).status_code == 400
    assert post(staff, "/api/controls/outage/", {"service": "mysql", "action": "cut"}).status_code == 400
    assert post(staff, "/api/controls/outage/", {"service": "redis", "action": "unplug"}).status_code == 400
    assert post(staff, "/api/controls/poison/", {"kind": "nope"}).status_code == 400
    assert not SupervisorRequest.objects.exists()


def test_with_a_supervisor_a_request_is_filed_for_it(staff, a_supervisor_runs):
    response = post(staff, "/api/controls/kill/", {"process": "worker-1", "signal": "SIGTERM"})
    assert response.status_code == 202, response.json()
    filed = SupervisorRequest.objects.get(pk=response.json()["request"])
    assert (filed.action, filed.target, filed.requested_by, filed.state) == ("stop", "worker-1", "ops", "pending")

    response = post(staff, "/api/controls/outage/", {"service": "postgresql", "action": "cut"})
    assert response.status_code == 202
    assert "restores itself" in response.json()["note"]
    assert SupervisorRequest.objects.filter(action="cut", target="postgresql").exists()


def cluster_nodes(*states: str) -> None:
    """The rows a supervisor running against `make cluster`'s nodes keeps fresh (rabbitmq-1 …)."""
    for number, state in enumerate(states, start=1):
        SupervisedProcessFactory(name=f"rabbitmq-{number}", role="rabbitmq", pid=100 + number, state=state)


def test_the_node_controls_need_a_supervisor_and_a_cluster(staff, a_supervisor_runs):
    # One broker (the AMQP_URL names one node): refused with the way to get a cluster, also shown on the page.
    response = post(staff, "/api/controls/node/", {"node": "rabbitmq-2", "action": "kill"})
    assert response.status_code == 409
    assert "make cluster" in response.json()["detail"] and "make run CLUSTER=1" in response.json()["detail"]
    state = staff.get("/api/pipeline/").json()["supervisor"]
    assert state["available"] is True and state["nodes"] == [] and "make cluster" in state["cluster_reason"]
    SupervisedProcess.objects.all().delete()  # no supervisor at all: its own reason comes first
    response = post(staff, "/api/controls/node/", {"node": "rabbitmq-2", "action": "kill"})
    assert response.status_code == 409 and response.json()["code"] == "no_supervisor"
    assert not SupervisorRequest.objects.exists()


def test_a_node_request_is_filed_and_bad_ones_are_clear_400s(staff, a_supervisor_runs):
    cluster_nodes("running", "crashed", "running")
    state = staff.get("/api/pipeline/").json()["supervisor"]
    assert [(n["name"], n["state"]) for n in state["nodes"]] == [
        ("rabbitmq-1", "running"),
        ("rabbitmq-2", "crashed"),
        ("rabbitmq-3", "running"),
    ]
    assert state["cluster_reason"] == "" and "rabbitmq-1" not in state["processes"]  # not in the process picker
    bad = [
        ({"node": "rabbitmq-7", "action": "kill"}, "rabbitmq-1, rabbitmq-2, rabbitmq-3"),
        ({"node": "rabbitmq-1", "action": "nuke"}, "nuke"),
        ({"node": "rabbitmq-2", "action": "kill"}, "restart it first"),  # down already
        ({"node": "rabbitmq-1", "action": "restart"}, "only a node that is down"),
        ({"action": "kill"}, "node"),
    ]
    for body, says in bad:
        response = post(staff, "/api/controls/node/", body)
        assert response.status_code == 400, body
        assert says in json.dumps(response.json()), (body, response.json())
    assert not SupervisorRequest.objects.exists()

    response = post(staff, "/api/controls/node/", {"node": "rabbitmq-1", "action": "kill"})
    assert response.status_code == 202, response.json()
    response = post(staff, "/api/controls/node/", {"node": "rabbitmq-2", "action": "restart"})
    assert response.status_code == 202, response.json()
    filed = list(SupervisorRequest.objects.order_by("id").values_list("action", "target", "requested_by", "state"))
    assert filed == [("kill", "rabbitmq-1", "ops", "pending"), ("restart", "rabbitmq-2", "ops", "pending")]
    # A node is not a worker: the kill endpoint does not reach it.
    assert post(staff, "/api/controls/kill/", {"process": "rabbitmq-3"}).status_code == 400


def test_a_poison_message_lands_in_the_dead_letter_queue_with_its_reason(staff, broker, start_worker):
    start_worker()
    response = post(staff, "/api/controls/poison/", {"kind": "undecodable"})
    assert response.status_code == 200, response.json()
    message_id = response.json()["message_id"]
    found: dict[str, object] = {}

    def dead_lettered() -> bool:
        method, props, _body = broker.channel.basic_get(broker.topology.dead_queue, auto_ack=True)
        if method is not None and props.message_id == message_id:
            found.update(props.headers or {})
        return bool(found)

    assert wait_until(dead_lettered, timeout=20)
    assert "undecodable" in str(found.get("x-orderpipe-reason"))


def test_the_bug_rate_fault_parks_an_order_by_the_delivery_limit_and_a_replay_after_the_fix_completes_it(
    broker, place_order, start_worker
):
    """The story "a step throws something that is not an outage": with bug rate 1 every step raises (a bug, not a
    timeout), the message is returned to the queue each time and the delivery limit parks it; once the "bug is
    fixed" (bug rate 0) a replay finishes the order. The worker keeps running throughout."""
    start_worker(faults=Faults())
    sandbox.sandbox_update(changes={"bug_rate": 1.0}, via="test")
    sandbox.reader.invalidate()
    assert sandbox.sandbox_state()["active_faults"] == ["bug rate 1"]
    order = place_order()
    relay_once(broker)
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.DEAD_LETTERED, 30)
    assert Order.objects.get(pk=order.pk).failure_reason.startswith("delivery limit reached")
    assert not Payment.objects.filter(order=order).exists()

    sandbox.sandbox_update(changes={"bug_rate": 0.0}, via="test")
    sandbox.reader.invalidate()  # the worker runs in this process: it would see the change within a second anyway
    assert replay_dead_letters(order.pk) == 1
    relay_once(broker)
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 30)
    assert Payment.objects.filter(order=order).count() == 1
