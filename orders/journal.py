"""The journal: every write of an order's journey event, and the SQL that writes it, in one place: a readable ORM
path, a one-statement-per-change path and a batch path, pinned to each other by tests (docs/10-design-notes.md,
"The journal").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.db import connection, models
from django.db.models import Field, Max
from psycopg import sql

from orders.failures import BrokenInvariant
from orders.models import EventKind, Order, OrderEvent, OrderLine, OutboxMessage

M = TypeVar("M", bound=models.Model)

ORDER, LINE, OUTBOX, EVENT = (sql.Identifier(m._meta.db_table) for m in (Order, OrderLine, OutboxMessage, OrderEvent))


def _render(statement: sql.Composable) -> str:
    return statement.as_string()


# The whole acceptance in one statement, so one round trip: the order, its lines, the outbox message, the first
# journey event (which names the outbox id, known only here, in its message, its queue part and the outbox row of its
# db part: the snapshot's first row) and the NOTIFY. A single statement is a transaction of
# its own, or part of the caller's if there is one (the idempotent path adds its key in the same transaction); the
# NOTIFY is delivered at commit, and only if it commits. Foreign keys are checked at commit (Django declares them
# DEFERRABLE INITIALLY DEFERRED), after every row exists. Each line's id is drawn from its sequence beside its
# position `n` in the request, so the ids come back ordered by `n`, not matched by insertion order.
_ACCEPT = _render(
    sql.SQL("""
WITH line_input AS MATERIALIZED (
    SELECT line.*, nextval(pg_get_serial_sequence({line_table}, 'id')) AS id
    FROM jsonb_to_recordset(%(lines)s::jsonb) AS line(n integer, product_id bigint, sku varchar, quantity integer,
                                                      unit_price numeric)
), new_order AS (
    INSERT INTO {order} (id, status, step, customer_email, total, note, failure_reason, attempts, version,
                         created_at, updated_at)
    VALUES (%(id)s, %(status)s, %(step)s, %(email)s, %(total)s, %(note)s, '', %(attempts)s, %(version)s, %(now)s,
            %(now)s)
    RETURNING id
), new_lines AS (
    INSERT INTO {line} (id, order_id, product_id, sku, quantity, unit_price)
    SELECT line_input.id, new_order.id, line_input.product_id, line_input.sku, line_input.quantity,
           line_input.unit_price
    FROM new_order, line_input
    RETURNING id
), new_outbox AS (
    INSERT INTO {outbox} (order_id, message_type, routing_key, payload, created_at, publish_attempts, last_error)
    SELECT new_order.id, %(message_type)s, %(routing_key)s, %(payload)s::jsonb, %(now)s, 0, '' FROM new_order
    RETURNING id
), accepted AS (
    INSERT INTO {event} (order_id, seq, kind, at, message, snapshot)
    SELECT %(id)s, 1, %(kind)s, %(now)s, %(message)s || new_outbox.id || '.',
           jsonb_set(jsonb_set(%(snapshot)s::jsonb, '{{queue,outbox_id}}', to_jsonb(new_outbox.id)),
                     '{{db,rows,0,id}}', to_jsonb(new_outbox.id::text))
    FROM new_outbox
    RETURNING id
)
SELECT new_outbox.id, accepted.id, ARRAY(SELECT id FROM line_input ORDER BY n),
       (SELECT count(*) FROM new_lines), pg_notify(%(channel)s, new_outbox.id::text)
FROM new_outbox, accepted
""").format(order=ORDER, line=LINE, outbox=OUTBOX, event=EVENT, line_table=sql.Literal(OrderLine._meta.db_table))
)

# One round trip per event: the next `seq` and the previous event's time (for the step-duration metric) are read
# by the INSERT itself. The caller's lock on the order row orders concurrent appends.
_PREVIOUS = sql.SQL(
    "SELECT COALESCE(MAX(seq), 0) AS seq, MAX(at) AS at FROM {event} WHERE order_id = %(order)s"
).format(event=EVENT)

_APPEND = _render(
    sql.SQL("""
WITH previous AS ({previous})
INSERT INTO {event} (order_id, seq, kind, at, message, snapshot)
SELECT %(order)s, previous.seq + 1, %(kind)s, %(at)s, %(message)s, %(snapshot)s::jsonb FROM previous
RETURNING id, seq, (SELECT at FROM previous)
""").format(previous=_PREVIOUS, event=EVENT)
)

# The guarded UPDATE and its event in one statement: the event row exists only if the guard matched (the order is
# still in the state and version the caller read under its lock), and `seq` follows the last event. `{changes}` is
# the list of further columns this transition sets, each with its own parameter.
_TRANSITION = sql.SQL("""
WITH moved AS (
    UPDATE {order} SET status = %(status)s, version = version + 1, updated_at = %(at)s{changes}
    WHERE id = %(order)s AND status = %(from_status)s AND version = %(from_version)s
    RETURNING id
), previous AS ({previous})
INSERT INTO {event} (order_id, seq, kind, at, message, snapshot)
SELECT moved.id, previous.seq + 1, %(kind)s, %(at)s, %(message)s, %(snapshot)s::jsonb FROM moved, previous
RETURNING id, seq, (SELECT at FROM previous)
""")

# Only the cache part of the snapshot travels (jsonb_set), not the whole snapshot again.
_SET_CACHE_STATE = _render(
    sql.SQL(
        "UPDATE {event} SET snapshot = jsonb_set(snapshot, '{{cache}}', %(state)s::jsonb) WHERE id = %(id)s"
    ).format(event=EVENT)
)
# On its own this UPDATE is its own transaction, and what it records is informative only: a database crash that
# lost it would leave the event's "written after the transaction commits" note. So its commit does not wait for the
# disk (synchronous_commit off, for this statement's transaction only); every commit that carries pipeline state
# still does.
_SET_CACHE_STATE_UNSYNCED = _render(
    sql.SQL(
        "UPDATE {event} SET snapshot = jsonb_set(snapshot, '{{cache}}', %(state)s::jsonb)"
        " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS this_transaction_only WHERE id = %(id)s"
    ).format(event=EVENT)
)


# The batch's guarded UPDATE and its events in one statement: `_TRANSITION` for many orders at once. Each input row
# names an order, the status and version it was read at under the caller's lock, and its event; only the orders still
# there move, and only they get an event, numbered after their own last one. `{columns}` are the further columns the
# transitions set (the same for every row of one statement), typed for jsonb_to_recordset; `{changes}` assigns them.
# The orders' and their events' rows are found through `%(ids)s` (`= ANY` of an array, which the planner answers from
# the primary key and the (order_id, seq) index): joined only to the recordset, whose size the planner cannot know,
# it would read both tables whole, a cost that grows with the tables.
_TRANSITION_MANY = sql.SQL("""
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
        AS input(n integer, id uuid, from_status varchar, from_version integer, status varchar, kind varchar,
                 message text, snapshot jsonb{columns})
), moved AS (
    UPDATE {order} SET status = input.status, version = {order}.version + 1, updated_at = %(at)s{changes}
    FROM input
    WHERE {order}.id = ANY(%(ids)s::uuid[])
      AND {order}.id = input.id AND {order}.status = input.from_status AND {order}.version = input.from_version
    RETURNING {order}.id
), previous AS (
    SELECT order_id, MAX(seq) AS seq, MAX(at) AS at FROM {event}
    WHERE order_id = ANY(%(ids)s::uuid[]) GROUP BY order_id
), inserted AS (
    INSERT INTO {event} (order_id, seq, kind, at, message, snapshot)
    SELECT input.id, COALESCE(previous.seq, 0) + 1, input.kind, %(at)s, input.message, input.snapshot
    FROM input JOIN moved ON moved.id = input.id LEFT JOIN previous ON previous.order_id = input.id
    ORDER BY input.n
    RETURNING order_id, id, seq
)
SELECT inserted.order_id, inserted.id, inserted.seq, previous.at
FROM inserted LEFT JOIN previous ON previous.order_id = inserted.order_id
""")

# The post-commit cache states of a batch's events, in one statement (see _SET_CACHE_STATE_UNSYNCED for why its
# commit need not wait for the disk).
_SET_CACHE_STATES_UNSYNCED = _render(
    sql.SQL(
        "UPDATE {event} SET snapshot = jsonb_set(snapshot, '{{cache}}', input.state)"
        " FROM jsonb_to_recordset(%(states)s::jsonb) AS input(id bigint, state jsonb),"
        " (SELECT set_config('synchronous_commit', 'off', true)) AS this_transaction_only"
        " WHERE {event}.id = ANY(%(ids)s::bigint[]) AND {event}.id = input.id"  # the primary key, not a scan
    ).format(event=EVENT)
)


@dataclass(frozen=True)
class Appended:
    """An event row just written: its id and `seq`, and the time of the event before it (None for the first)."""

    pk: int
    seq: int
    previous_at: datetime | None


@dataclass(frozen=True)
class Accepted:
    outbox_id: int
    event_id: int
    line_ids: list[int]  # by position in the request (the `n` each id was drawn for)


# ---------------------------------------------------------------- the readable path


def append_reference(
    order: Order, kind: EventKind, message: str, snapshot: dict[str, Any]
) -> tuple[OrderEvent, datetime | None]:
    """Append an event with the ORM: read the last `seq` (and its time, for the step-duration metric), insert the
    next. Returns the event and the previous event's time. Two queries, no SQL of our own."""
    last = OrderEvent.objects.filter(order_id=order.id).aggregate(seq=Max("seq"), at=Max("at"))
    event = OrderEvent.objects.create(
        order=order, seq=(last["seq"] or 0) + 1, kind=kind, message=message, snapshot=snapshot
    )
    return event, last["at"]


# ---------------------------------------------------------------- the fast path


def accept(
    *,
    order: Order,
    lines: list[OrderLine],
    outbox: OutboxMessage,
    message: str,
    snapshot: Mapping[str, Any],
    channel: str,
) -> Accepted:
    """Insert a new order, its lines, its outbox message and its `accepted` event, and NOTIFY `channel` (_ACCEPT).
    `message` is the event's text up to the outbox id, which the statement appends."""
    params: dict[str, Any] = {
        "id": order.id,
        "status": str(order.status),
        "step": str(order.step),
        "email": order.customer_email,
        "total": order.total,
        "note": order.note,
        "attempts": order.attempts,
        "version": order.version,
        "now": order.created_at,
        # One JSON parameter rather than four arrays: psycopg adapts an array element by element, a JSON string at once.
        "lines": json.dumps(
            [
                {
                    "n": n,
                    "product_id": line.product_id,
                    "sku": line.sku,
                    "quantity": line.quantity,
                    "unit_price": str(line.unit_price),
                }
                for n, line in enumerate(lines)
            ]
        ),
        "message_type": outbox.message_type,
        "routing_key": outbox.routing_key,
        "payload": json.dumps(outbox.payload),
        "kind": str(EventKind.ACCEPTED),
        "message": message,
        "snapshot": json.dumps(snapshot),
        "channel": channel,
    }
    with connection.cursor() as cursor:
        cursor.execute(_ACCEPT, params)
        outbox_id, event_id, line_ids, _, _ = cursor.fetchone()
    return Accepted(outbox_id=outbox_id, event_id=event_id, line_ids=line_ids)


def append(order: Order, kind: EventKind, message: str, snapshot: dict[str, Any], *, at: datetime) -> Appended:
    """Append an event in one statement (_APPEND)."""
    params: dict[str, Any] = {
        "order": order.id,
        "kind": str(kind),
        "at": at,
        "message": message,
        "snapshot": json.dumps(snapshot),
    }
    with connection.cursor() as cursor:
        cursor.execute(_APPEND, params)
        return Appended(*cursor.fetchone())


def transition(
    order_id: object,
    *,
    from_status: str,
    from_version: int,
    to: str,
    at: datetime,
    changes: dict[str, Any],
    kind: EventKind,
    message: str,
    snapshot: Mapping[str, Any],
) -> Appended | None:
    """Move the order from `from_status` (at `from_version`) to `to`, set the fields in `changes`, and append the
    event at `at`, in one guarded statement (_TRANSITION). Returns None, writing nothing, if the order is no longer
    at `from_status` and `from_version`."""
    params: dict[str, Any] = {
        "order": order_id,
        "from_status": from_status,
        "from_version": from_version,
        "status": to,
        "at": at,
        "kind": str(kind),
        "message": message,
        "snapshot": json.dumps(snapshot),
    }
    for name, value in changes.items():
        params[f"set_{name}"] = _order_field(name).get_db_prep_save(value, connection)
    with connection.cursor() as cursor:
        cursor.execute(_transition_statement(tuple(changes)), params)
        row = cursor.fetchone()
    return None if row is None else Appended(*row)


def _order_field(name: str) -> Field:
    """A concrete field of the order table (never a reverse relation: `changes` name the order's own fields)."""
    field = Order._meta.get_field(name)
    assert isinstance(field, Field), f"{name} is not a field of the order table"
    return field


def _order_column(name: str) -> str:
    column = _order_field(name).column
    assert column, f"{name} has no column"
    return column


@functools.cache
def _transition_statement(names: tuple[str, ...]) -> str:
    """_TRANSITION setting the columns of these fields too, each from its own parameter `set_<name>`."""
    assignments = [
        sql.SQL(", {} = {}").format(sql.Identifier(_order_column(name)), sql.Placeholder(f"set_{name}"))
        for name in names
    ]
    return _render(_TRANSITION.format(order=ORDER, event=EVENT, previous=_PREVIOUS, changes=sql.Composed(assignments)))


@dataclass(frozen=True)
class Move:
    """One order's part of `transition_many`: where it was (read under the caller's lock), where it goes, the
    further fields it sets, and its event."""

    order_id: object
    from_status: str
    from_version: int
    to: str
    changes: dict[str, Any]
    kind: EventKind
    message: str
    snapshot: Mapping[str, Any]


def transition_many(moves: list[Move], *, at: datetime) -> dict[str, Appended]:
    """`transition` for many orders in one guarded statement (_TRANSITION_MANY): each order still at its
    `from_status` and `from_version` moves and gets its event, all at `at`. Every move must set the same fields.
    Returns the appended events by order id (as text); an order that had moved on is missing from it."""
    if not moves:
        return {}
    names = tuple(moves[0].changes)
    if any(tuple(move.changes) != names for move in moves):
        raise BrokenInvariant(f"one statement sets one list of fields; the first move sets {names}")
    rows = [
        {
            "n": n,
            "id": str(move.order_id),
            "from_status": move.from_status,
            "from_version": move.from_version,
            "status": move.to,
            "kind": str(move.kind),
            "message": move.message,
            "snapshot": move.snapshot,
            **{f"set_{name}": move.changes[name] for name in names},
        }
        for n, move in enumerate(moves)
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            _transition_many_statement(names),
            {"rows": json.dumps(rows, default=_json_value), "ids": [move.order_id for move in moves], "at": at},
        )
        return {str(order_id): Appended(pk, seq, previous_at) for order_id, pk, seq, previous_at in cursor.fetchall()}


def _json_value(value: object) -> object:
    # Full precision: DjangoJSONEncoder would cut a datetime to milliseconds, and the row must hold what the event's
    # snapshot shows.
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _order_type(name: str) -> str:
    db_type = _order_field(name).db_type(connection)
    assert db_type, f"{name} has no column type"
    return db_type


@functools.cache
def _transition_many_statement(names: tuple[str, ...]) -> str:
    """_TRANSITION_MANY setting the columns of these fields too, each from the input's `set_<name>`."""
    columns = [sql.SQL(", {} {}").format(sql.Identifier(f"set_{name}"), sql.SQL(_order_type(name))) for name in names]
    assignments = [
        sql.SQL(", {} = input.{}").format(sql.Identifier(_order_column(name)), sql.Identifier(f"set_{name}"))
        for name in names
    ]
    return _render(
        _TRANSITION_MANY.format(
            order=ORDER, event=EVENT, columns=sql.Composed(columns), changes=sql.Composed(assignments)
        )
    )


def set_cache_states(states: list[tuple[int, dict[str, Any]]]) -> None:
    """`set_cache_state` for a batch's events, in one statement of its own (outside any transaction)."""
    if not states:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _SET_CACHE_STATES_UNSYNCED,
            {
                "states": json.dumps([{"id": pk, "state": state} for pk, state in states]),
                "ids": [pk for pk, _ in states],
            },
        )


def set_cache_state(event_id: int, state: dict[str, Any]) -> None:
    """Record in an event's snapshot what Redis held after the commit (the post-commit cache write)."""
    statement = _SET_CACHE_STATE if connection.in_atomic_block else _SET_CACHE_STATE_UNSYNCED
    with connection.cursor() as cursor:
        cursor.execute(statement, {"state": json.dumps(state), "id": event_id})


def loaded(instance: M) -> M:
    """`instance`, marked as read from the database, for a row the fast path inserted with SQL: saving it again
    updates instead of inserting. The two flags `Model.from_db` sets, set on the instance itself: a copy made by from_db
    would instantiate the model again and lose the related instances the caller had attached."""
    instance._state.adding = False
    instance._state.db = connection.alias
    return instance
