"""Who may watch and who may steer. Pages, WebSocket consumers and the control endpoints all ask here."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def can_watch(user: Any) -> bool:
    """Pages and live updates: anyone in DEBUG (what `make run` uses), otherwise active staff. They show every
    order's email and note, which a logged-in customer must not read (the API's reads follow the same rule)."""
    return bool(settings.DEBUG or (user is not None and user.is_active and user.is_staff))


def can_control(user: Any) -> bool:
    """Sandbox controls: staff only, and only while the sandbox is enabled."""
    return bool(settings.ORDERPIPE_SANDBOX and user is not None and user.is_active and user.is_staff)
