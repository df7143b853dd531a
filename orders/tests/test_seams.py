"""The production path reads as the production path: the sandbox's modes reach the core modules only through the
seams (orders/sandbox/policies.py chooses, orders/sandbox/faults.py injects), so no core module branches on a mode,
and with the sandbox off every seam is the safe implementation. bin/seam-count counts; this pins its counts.
"""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import pytest

from orders import sandbox, services, steps
from orders.sandbox import policies, unsafe_steps
from orders.sandbox.faults import Faults

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]
SEAM_COUNT = runpy.run_path(str(ROOT / "bin" / "seam-count"))
CORE: tuple[str, ...] = SEAM_COUNT["CORE"]
# Each core module's teaching sites (bin/seam-count lists them), at most: a new one is a call to a seam, or a
# branch that belongs in one.
SITES = {
    "orders/api.py": 7,
    "orders/services.py": 5,
    "orders/selectors.py": 5,
    "orders/steps.py": 12,
    "orders/runner.py": 9,
    "orders/batch.py": 0,
    "orders/gateway.py": 19,
    "worker/consumer.py": 16,
    "worker/relay.py": 0,
    "worker/processing.py": 11,
}


def test_every_core_module_is_pinned():
    assert set(SITES) == set(CORE)


@pytest.mark.parametrize("path", CORE)
def test_no_core_module_branches_on_a_mode(path):
    _, _, on_modes = SEAM_COUNT["count"](path)
    assert on_modes == [], f"{path} branches on a sandbox mode; choose an implementation in orders/sandbox/policies.py"


@pytest.mark.parametrize("path", CORE)
def test_the_teaching_sites_of_each_core_module_stay_counted(path):
    found, _, _ = SEAM_COUNT["count"](path)
    assert len(found) <= SITES[path], "\n".join(f"{line}: {text}" for line, text in found)


def test_the_count_sees_a_mode_branch_and_a_seam_call():
    tree = ast.parse(
        "def step(seams, order):\n"
        "    if seams.faults.stock_update() == StockUpdate.READ_MODIFY_WRITE:\n"
        "        pass\n"
        "    return seams.policy.take_stock(order, -1)\n"
    )
    assert [text for _, text in SEAM_COUNT["branches"](tree, SEAM_COUNT["MODES"])] == [
        "seams.faults.stock_update() == StockUpdate.READ_MODIFY_WRITE"
    ]
    assert [text for _, text in SEAM_COUNT["sites"](tree)] == [
        "StockUpdate.READ_MODIFY_WRITE",
        "seams.faults.stock_update()",
        "seams.policy.take_stock(order, -1)",
    ]


class Unsafe:
    """A settings reader whose row has every unsafe mode on."""

    version = 1

    def get(self, *, fresh: bool = False) -> dict:
        return {
            **sandbox.DEFAULTS,
            "ack_mode": "on_receive",
            "publish_mode": "dual_write",
            "step_guards": False,
            "cache_mode": "off",
            "stock_update": "read_modify_write",
            "accept_failure_rate": 1.0,
        }


def test_with_the_sandbox_off_every_seam_is_the_safe_one(settings, monkeypatch):
    settings.ORDERPIPE_SANDBOX = False
    monkeypatch.setattr(sandbox, "reader", Unsafe())
    faults = Faults(reader=Unsafe())  # type: ignore[arg-type]
    assert faults.policy() is steps.SAFE_STEPS
    assert faults.acks_on_receipt() is False
    assert policies.accept_policy() is services.order_accept
    assert type(policies.cache_policy()) is policies.WriteThrough
    assert policies.cache_policy().counts_stale is False


def test_with_the_sandbox_on_each_unsafe_mode_swaps_in_its_implementation(settings, monkeypatch):
    settings.ORDERPIPE_SANDBOX = True
    monkeypatch.setattr(sandbox, "reader", Unsafe())
    faults = Faults(reader=Unsafe())  # type: ignore[arg-type]
    policy = faults.policy()
    assert policy.at is unsafe_steps.processing_at_any_step
    assert policy.take_stock is unsafe_steps.read_modify_write_stock
    assert policy.charge is unsafe_steps.charge_without_its_key
    assert faults.acks_on_receipt() is True
    assert policies.accept_policy() is not services.order_accept
    assert type(policies.cache_policy()) is policies.NoCache
    only_guards_off = policies.step_policy(sandbox.Modes(step_guards=False))
    assert only_guards_off.take_stock is steps.change_stock
    assert only_guards_off.record_payment is unsafe_steps.keep_first_payment
