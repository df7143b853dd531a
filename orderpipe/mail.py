"""An email backend for development and demos that says an email went out, in one log line, without its content.

Django's console backend prints every email whole to stdout: the customer's address, the items and the total,
over several lines that are not JSON, so under LOG_FORMAT=json they break the log stream and they put customer
data in the logs. This backend logs through the logging config instead (so it follows LOG_FORMAT), with the
recipients masked (`a***@example.com`), the subject and the body's length; never the body.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

log = logging.getLogger("orderpipe.mail")


def mask_address(address: str) -> str:
    """`ada@example.com` -> `a***@example.com`: enough to tell emails apart, not to read the address."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


class LoggingEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        for message in email_messages:
            recipients = [mask_address(address) for address in message.recipients()]
            log.info(
                "email %r to %s (%d characters, content not logged)",
                message.subject,
                ", ".join(recipients),
                len(message.body),
                extra={"email_to": recipients, "email_subject": message.subject},
            )
        return len(email_messages)
