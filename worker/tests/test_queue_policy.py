"""The full-queue lesson's length limit, on the real broker: a policy that `make run`'s supervisor sets with
rabbitmqctl on exactly this run's main queue. Drop-head confirms every publish and drops the oldest messages;
reject-publish nacks, and the relay leaves the refused rows in the outbox; clearing the policy lifts the limit."""

from __future__ import annotations

import shutil
import subprocess

import pika
import pytest
from django.conf import settings

from orders.models import OutboxMessage, SandboxSettings
from worker.queue_policy import FAILED, QueuePolicy, policy_name, policy_pattern, wanted_policy
from worker.relay import relay_once
from worker.tests.processes import wait_until
from worker.topology import Topology

pytestmark = [pytest.mark.django_db(transaction=True)]

if shutil.which(settings.RABBITMQCTL) is None:
    pytest.skip(f"no {settings.RABBITMQCTL} here", allow_module_level=True)


def policies() -> str:
    return subprocess.run([settings.RABBITMQCTL, "-q", "list_policies"], capture_output=True, text=True).stdout


def leader_max_length(topology: Topology) -> str:
    """The max-length the main queue's Raft leader enforces (`10`, or `undefined`), read from its state with
    rabbitmqctl eval: a policy reaches a quorum queue's leader asynchronously, after set_policy has answered."""
    vhost = pika.URLParameters(settings.AMQP_URLS[0]).virtual_host
    expression = (
        f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, <<"{topology.process_queue}">>)), '
        "{ok, {_, Config}, _} = ra:leader_query(amqqueue:get_pid(Q), "
        "fun(State) -> maps:get(config, rabbit_fifo:overview(State)) end), maps:get(max_length, Config)."
    )
    ran = subprocess.run([settings.RABBITMQCTL, "-q", "eval", expression], capture_output=True, text=True)
    return ran.stdout.strip()


@pytest.fixture
def limit(broker):
    """Sets the policy for this run's topology; always cleared at the end."""
    policy = QueuePolicy(broker.topology, ctl=lambda: [settings.RABBITMQCTL])

    def apply(overflow: str) -> None:
        assert policy.follow(wanted_policy(10, overflow))
        # Its max-length and overflow reach the leader in one configuration command.
        assert wait_until(lambda: leader_max_length(broker.topology) == "10", 30)

    yield apply
    policy.clear()
    assert policy_name(broker.topology) not in policies()


def ready(broker) -> int:
    return broker.channel.queue_declare(broker.topology.process_queue, passive=True).method.message_count


def test_the_pattern_matches_only_this_instances_main_queue():
    topo = Topology(prefix="a.b", delivery_limit=5, retry_delays_ms=(1000,))
    assert policy_pattern(topo) == r"^a\.b\.orders\.process$"
    assert wanted_policy(None, "drop_head") == ""
    assert wanted_policy(10, "drop_head") == '{"max-length": 10, "overflow": "drop-head"}'


def test_drop_head_confirms_every_publish_and_keeps_only_the_newest(broker, limit, place_order):
    limit("drop_head")
    assert policy_name(broker.topology) in policies()
    assert SandboxSettings.load().queue_policy_in_effect == wanted_policy(10, "drop_head")
    for n in range(15):
        place_order(email=f"full{n}@example.com")
    assert relay_once(broker) == 15  # every publish confirmed
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()
    assert ready(broker) == 10  # and five messages dropped from the head
    # The dropped ones were dead-lettered (the main queue has a dead-letter exchange), reason maxlen.
    method, props, _body = broker.channel.basic_get(broker.topology.dead_watch_queue, auto_ack=True)
    assert method is not None and props.headers["x-first-death-reason"] == "maxlen"


def test_reject_publish_nacks_and_the_relay_keeps_the_refused_rows_in_the_outbox(broker, limit, place_order):
    """A quorum queue refuses publishes once it is over its limit (it may take a message or so more than the limit:
    the refusal reaches the channel once the queue has applied the enqueue that filled it)."""
    limit("reject_publish")
    for n in range(15):
        place_order(email=f"full{n}@example.com")
    published = sum(relay_once(broker, batch_size=1) for _ in range(15))  # one at a time, as orders arrive
    waiting = OutboxMessage.objects.filter(sent_at__isnull=True)
    assert 10 <= published < 15 and waiting.count() == 15 - published
    refused = waiting.order_by("id").first()
    assert refused.publish_attempts > 1 and "nack" in refused.last_error.lower()
    assert ready(broker) == published
    # Room again (a worker took them): the relay publishes the rows it kept.
    for _ in range(published):
        method, _props, _body = broker.channel.basic_get(broker.topology.process_queue, auto_ack=True)
        assert method is not None
    assert relay_once(broker) == 15 - published
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


def test_a_failing_rabbitmqctl_is_recorded_for_the_applied_answer(broker):
    policy = QueuePolicy(broker.topology, ctl=lambda: [settings.RABBITMQCTL, "-n", "nobody@nowhere"])
    assert not policy.follow(wanted_policy(10, "drop_head"))
    assert SandboxSettings.load().queue_policy_in_effect.startswith(FAILED)


def test_the_supervisor_follows_the_setting_and_clears_the_policy_when_it_stops(broker):
    from orders import sandbox
    from worker.supervisor import Supervisor

    supervisor = Supervisor(roles=(), read_every=0.0)
    supervisor.queue_policy = QueuePolicy(broker.topology, ctl=lambda: [settings.RABBITMQCTL])
    try:
        supervisor.tick()  # at start, no limit wanted: clearing a policy that does not exist is no failure
        assert SandboxSettings.load().queue_policy_in_effect == ""
        sandbox.sandbox_update(changes={"queue_max_length": 10, "queue_overflow": "drop_head"}, via="test")
        supervisor.tick()
        assert policy_name(broker.topology) in policies()
        assert SandboxSettings.load().queue_policy_in_effect == wanted_policy(10, "drop_head")
        sandbox.sandbox_reset(via="test")  # "Restore defaults", or any lesson's baseline
        supervisor.tick()
        assert policy_name(broker.topology) not in policies()
        sandbox.sandbox_update(changes={"queue_max_length": 5}, via="test")
        supervisor.tick()
        assert policy_name(broker.topology) in policies()
    finally:
        supervisor.stop()
    assert policy_name(broker.topology) not in policies()
    assert SandboxSettings.load().queue_policy_in_effect == ""
