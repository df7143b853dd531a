from __future__ import annotations

import pytest
from django.core.management import call_command


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
