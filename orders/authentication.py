"""How API requests are authenticated (DRF's DEFAULT_AUTHENTICATION_CLASSES): the session, plus Basic in DEBUG."""

from __future__ import annotations

from django.conf import settings
from rest_framework.authentication import BasicAuthentication
from rest_framework.request import Request


class BasicAuthenticationInDebug(BasicAuthentication):
    """HTTP Basic for curl in the sandbox only. Outside DEBUG a Basic header is ignored: every wrong password would
    otherwise cost a password hash (~1 s of CPU) on any endpoint, anonymously, with no login throttle in front."""

    def authenticate(self, request: Request):
        if not settings.DEBUG:
            return None
        return super().authenticate(request)
