"""`make run` calls this: with DJANGO_DEBUG=true it makes sure a demo staff login exists and prints it."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "orderpipe-demo"


class Command(BaseCommand):
    help = "DEBUG only: create (or reset) the demo staff user and print its login. Idempotent."

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            self.stdout.write(
                "ensure_demo_staff: skipped (DJANGO_DEBUG is not true; create staff with createsuperuser)"
            )
            return
        user, created = get_user_model().objects.get_or_create(username=DEMO_USERNAME)
        user.is_staff = True
        user.is_superuser = True
        user.is_active = True
        user.set_password(DEMO_PASSWORD)
        user.save()
        self.stdout.write(
            f"demo staff login ({'created' if created else 'ready'}): "
            f"username {DEMO_USERNAME!r} password {DEMO_PASSWORD!r} — log in at /admin/login/"
        )
