from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from orders.models import Product
from orders.serializers import OrderInputSerializer, order_input, order_input_fast
from orders.tests.factories import ProductFactory


@pytest.mark.django_db
def test_swaggers_example_order_is_accepted_as_it_stands(client, admin_user):
    call_command("seed_demo")
    client.force_login(admin_user)  # the schema is staff's outside DEBUG
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    client.logout()
    examples = schema["paths"]["/api/orders/"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    body = next(iter(examples.values()))["value"]
    response = client.post("/api/orders/", body, content_type="application/json")
    assert response.status_code == 202, response.content
    assert [line["sku"] for line in response.json()["items"]] == [item["sku"] for item in body["items"]]


# ---------------------------------------------------------------- the accept path's fast validation

KNOWN = ["FAST-1", "FAST-2", "FAST-3"]
texts = st.one_of(
    st.sampled_from(["", " ", "ada@example.com", " ada@example.com", "ada@example.com ", "not-an-email", "a@b"]),
    st.sampled_from(["ada@exämple.com", "ada\x00@example.com", "x" * 250 + "@example.com", "\ud800@example.com"]),
    st.text(max_size=12),
)
skus = st.one_of(st.sampled_from([*KNOWN, "NOPE", " FAST-1", "FAST-1 ", "", "x" * 65]), st.text(max_size=6))
quantities = st.one_of(
    st.integers(min_value=-2, max_value=102), st.sampled_from(["5", "five", 5.0, 2.5, True, None, [1]])
)
line_items: st.SearchStrategy[list[Any]] = st.lists(
    st.one_of(
        st.fixed_dictionaries({"sku": skus, "quantity": quantities}),
        st.fixed_dictionaries({"sku": skus, "quantity": quantities, "extra": st.just(1)}),
        st.fixed_dictionaries({"sku": skus}),
        st.sampled_from([None, "FAST-1", 3, []]),
    ),
    max_size=4,
)
good_items = st.lists(
    st.fixed_dictionaries(
        {
            "sku": st.sampled_from([*KNOWN, "NOPE"]),
            "quantity": st.one_of(st.integers(1, 100), st.sampled_from([0, 101, "2"])),
        }
    ),
    min_size=1,
    max_size=3,
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "customer_email": st.sampled_from(["ada@example.com", "b.c+d@sub.example.org", "a@b", " e@example.com"]),
            "items": good_items,
        },
        optional={"note": st.sampled_from(["", "gift", " gift", "é", None])},
    ),
    st.fixed_dictionaries(
        {"customer_email": texts, "items": line_items},
        optional={"note": st.one_of(texts, st.none(), st.just("é"), st.just("n" * 501)), "extra": st.just(1)},
    ),
    st.sampled_from([None, [], "text", 3, {}, {"items": [{"sku": "FAST-1", "quantity": 1}]}]),
)


def plain(value: Any) -> Any:
    """DRF's OrderedDicts as plain dicts, so that validated data compares with the fast path's."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@pytest.mark.django_db
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_the_fast_validation_agrees_with_the_serializer(body):
    for n, sku in enumerate(KNOWN):
        Product.objects.get_or_create(sku=sku, defaults={"name": sku, "price": Decimal("1.50") + n, "stock": 5})
    reference = OrderInputSerializer(data=body)
    valid = reference.is_valid()
    fast = order_input_fast(body)
    event("fast path" if fast is not None else "serializer, valid" if valid else "serializer, invalid")
    if fast is not None:  # the shape is valid: DRF agrees, or objects only to the skus (unknown or repeated)
        if valid:
            assert fast == plain(reference.validated_data)
        else:
            assert list(reference.errors) == ["items"], reference.errors
            assert "sku" in str(reference.errors["items"][0]), reference.errors
    if valid:
        validated, products = order_input(body)
        assert validated == plain(reference.validated_data)
        assert {s: (p.pk, p.price) for s, p in products.items()} == {
            s: (p.pk, p.price) for s, p in reference.products.items()
        }
    else:
        with pytest.raises(ValidationError) as raised:
            order_input(body)
        assert raised.value.detail == reference.errors


@pytest.mark.django_db
def test_a_plain_order_takes_the_fast_path():
    ProductFactory(sku="FAST-1", stock=1)
    body = {"customer_email": "ada@example.com", "items": [{"sku": "FAST-1", "quantity": 3}], "note": "hi"}
    assert order_input_fast(body) == body
    assert order_input_fast({**body, "note": " hi"}) is None  # DRF would trim it: the serializer decides
