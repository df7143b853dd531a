"""The unsafe modes as a learner meets them in a real browser: set from the dashboard's form, announced by the red
banner (live, on every page), and undone with one click."""

from __future__ import annotations

import pytest

from orders import sandbox
from orders.models import SandboxSettings
from worker.tests.conftest import open_logged_in, require_chromium, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

require_chromium()


def test_unsafe_modes_from_the_form_raise_the_red_banner_and_one_click_restores_them(web, browser, staff):
    context, page = open_logged_in(browser, web.url)
    try:
        assert page.locator("#unsafe-banner").is_hidden()
        page.locator("#unsafe-modes summary").click()  # folded while every mode is safe
        page.locator("#sandbox-ack_mode").select_option("on_receive")
        page.locator("#sandbox-step_guards").select_option("false")
        with page.expect_request(lambda r: r.method == "PATCH") as request:
            page.get_by_role("button", name="Apply").click()
        page.locator("#sandbox-result[data-ok=yes]").wait_for()
        assert request.value.post_data_json == {"ack_mode": "on_receive", "step_guards": False}
        page.locator("#unsafe-banner", has_text="ack_mode=on_receive, step_guards=false").wait_for()
        page.locator("#unsafe-banner").scroll_into_view_if_needed()
        screenshot(page, "test_unsafe_modes_red_banner", full_page=False)
        page.locator("#sandbox-form").scroll_into_view_if_needed()
        screenshot(page, "test_unsafe_modes_form", full_page=False)
        assert (SandboxSettings.load().ack_mode, SandboxSettings.load().step_guards) == ("on_receive", False)

        # Set elsewhere (the command, the admin), it shows up live here too.
        sandbox.sandbox_update(changes={"cache_mode": "cache_aside"}, via="test")
        page.locator("#unsafe-banner", has_text="cache_mode=cache_aside").wait_for()
        page.wait_for_function("() => document.getElementById('sandbox-cache_mode').value === 'cache_aside'")

        page.get_by_role("button", name="Restore safe modes").click()
        page.locator("#unsafe-banner").wait_for(state="hidden")
        row = SandboxSettings.load()
        assert {name: getattr(row, name) for name in sandbox.UNSAFE_MODES} == {
            name: sandbox.DEFAULTS[name] for name in sandbox.UNSAFE_MODES
        }
    finally:
        context.close()
