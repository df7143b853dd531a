"""`make run` calls this: with DJANGO_DEBUG=true it makes sure a demo staff login exists and prints it. Outside DEBUG
that login is refused whatever this command did before (orders/demo_login.py)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from orders.demo_login import DEMO_PASSWORD, DEMO_USERNAME


class Command(BaseCommand):
    help = "DEBUG only: create (or repair) the demo staff user and print its login. Idempotent."

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            left = get_user_model().objects.filter(username=DEMO_USERNAME).exists()
            self.stdout.write(
                "ensure_demo_staff: skipped (DJANGO_DEBUG is not true; create staff with createsuperuser)"
                + (f"; the {DEMO_USERNAME!r} account left by a DEBUG run cannot log in" if left else "")
            )
            return
        user, created = get_user_model().objects.get_or_create(username=DEMO_USERNAME)
        user.is_staff = True
        user.is_superuser = True
        user.is_active = True
        # Only when it does not work already: a new hash (a new salt) would log out every session of the account,
        # so each `make run` would log the learner out.
        if not user.check_password(DEMO_PASSWORD):
            user.set_password(DEMO_PASSWORD)
        user.save()
        self.stdout.write(
            f"demo staff login ({'created' if created else 'ready'}): "
            f"username {DEMO_USERNAME!r} password {DEMO_PASSWORD!r} — log in at /admin/login/"
        )
