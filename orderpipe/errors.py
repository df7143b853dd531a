"""What DEBUG error pages may show. Django masks settings whose names look secret (KEY, PASS, TOKEN...), but this
project's connection strings (DATABASE_URL, AMQP_URL, REDIS_URL, and the cache and channel layer built from them)
carry passwords in values whose names do not."""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# user:password@ in any scheme://... string.
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]*:)[^@\s]+@", re.IGNORECASE)


class SecretUrlsFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile(SafeExceptionReporterFilter.hidden_settings.pattern + r"|_URL$", flags=re.I)

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        # Django recurses into dicts and lists through this method, so nested values come here one by one.
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            return URL_PASSWORD.sub(rf"\g<head>{self.cleansed_substitute}@", cleansed)
        return cleansed
