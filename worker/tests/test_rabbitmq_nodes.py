"""Which nodes of bin/rabbitmq-cluster the supervisor offers to kill and restart (worker/rabbitmq_nodes.py): only
those the AMQP_URL names, and none with a single broker. No node is started here: the script lists its nodes, up or
down, from its state directory. Killing and restarting real nodes from the page: test_cluster.py."""

from __future__ import annotations

import os

from worker.rabbitmq_nodes import ClusterNodes


def script_env(tmp_path) -> dict[str, str]:
    return dict(
        os.environ,
        RABBITMQ_CLUSTER_DIR=str(tmp_path / "cluster"),
        RABBITMQ_CLUSTER_PORTS="16681 16682 16683",
        RABBITMQ_CLUSTER_DIST_PORTS="16691 16692 16693",
    )


def url(port: int, host: str = "127.0.0.1") -> str:
    return f"amqp://guest:guest@{host}:{port}/%2F"


def test_the_nodes_the_amqp_url_names_are_offered(tmp_path):
    cluster = ClusterNodes.find([url(16681), url(16683, "localhost")], env=script_env(tmp_path))
    assert cluster is not None
    assert cluster.numbers == {1: 16681, 3: 16683}
    assert [(node.name, node.pid) for node in cluster.nodes()] == [("rabbitmq-1", None), ("rabbitmq-3", None)]
    assert cluster.number_of("rabbitmq-3") == 3
    assert cluster.number_of("rabbitmq-2") is None  # not in the AMQP_URL: not offered
    assert cluster.number_of("worker-1") is None
    assert cluster.kill(1) is None  # down: nothing to kill


def test_one_broker_or_other_nodes_offer_nothing(tmp_path):
    env = script_env(tmp_path)
    assert ClusterNodes.find([url(16681)], env=env) is None
    # Several nodes, but not the script's (a cluster run some other way: their pids are unknown here).
    assert ClusterNodes.find([url(5672), url(16682)], env=env) is None
    assert ClusterNodes.find([url(16681, "10.0.0.5"), url(16682, "10.0.0.6")], env=env) is None
