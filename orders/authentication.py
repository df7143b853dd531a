"""How API requests are authenticated (DRF's DEFAULT_AUTHENTICATION_CLASSES): the session, plus Basic in DEBUG."""

from __future__ import annotations

from django.conf import settings
from rest_framework.authentication import BasicAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request


class BasicAuthenticationInDebug(BasicAuthentication):
    """HTTP Basic for curl in the sandbox only. Outside DEBUG a Basic header is ignored (and the schema does not
    advertise it: settings' AUTHENTICATION_WHITELIST): every wrong password would otherwise cost a password hash
    (~0.5 s of CPU) on any endpoint, anonymously, with no login throttle in front."""

    def authenticate(self, request: Request):
        if not settings.DEBUG:
            return None
        return super().authenticate(request)

    def authenticate_credentials(self, userid: str, password: str, request: Request | None = None):
        # PostgreSQL cannot hold a NUL in a string: the user lookup would fail as a database error, not a bad login.
        if "\x00" in userid or "\x00" in password:
            raise AuthenticationFailed("Invalid username/password.")
        return super().authenticate_credentials(userid, password, request)
