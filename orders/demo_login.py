"""The demo staff login (`demo` / `orderpipe-demo`, printed by `make run`) works only while DEBUG is on.

`ensure_demo_staff` creates the account only in DEBUG, but a database first used by `make run` keeps it; with
DJANGO_DEBUG=false that published password would still open the admin and the sandbox controls. Why a backend,
and not a start-up check that deactivates the account: every way in asks the authentication backend (the admin's
login form, DRF's session and Basic authentication, the WebSockets' AuthMiddlewareStack, and every request of an
existing session, through `get_user`), so it covers all of them in every process (gunicorn, daphne) without
writing to the database at start-up, and the account works again as soon as DEBUG is back on.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend

log = logging.getLogger(__name__)

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "orderpipe-demo"


def demo_login_allowed() -> bool:
    return bool(settings.DEBUG)


class DemoLoginBackend(ModelBackend):
    """Django's ModelBackend, except that the demo account cannot log in, or stay logged in, outside DEBUG."""

    def user_can_authenticate(self, user: Any) -> bool:
        if user is not None and user.get_username() == DEMO_USERNAME and not demo_login_allowed():
            log.warning("demo login refused: the %r account works only with DJANGO_DEBUG=true", DEMO_USERNAME)
            return False
        return super().user_can_authenticate(user)
