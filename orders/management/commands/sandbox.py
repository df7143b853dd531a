from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from orders import sandbox
from orders.models import SandboxSettings

USAGE = "sandbox show | sandbox set key=value [key=value ...] | sandbox reset"


def parse_value(name: str, raw: str) -> object:
    field = SandboxSettings._meta.get_field(name)
    internal = field.get_internal_type()
    if field.null and raw.lower() in {"", "none", "default"}:
        return None
    if getattr(field, "choices", None):
        return raw  # checked against the choices by the model's validation
    try:
        if internal == "BooleanField":
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if internal == "FloatField":
            return float(raw)
        return int(raw)
    except ValueError:
        raise CommandError(f"{name}: {raw!r} is not a valid {internal.removesuffix('Field').lower()}") from None


class Command(BaseCommand):
    help = "Show or change the fault injector and the unsafe modes (refused when ORDERPIPE_SANDBOX=false). " + USAGE

    def add_arguments(self, parser) -> None:
        parser.add_argument("action", choices=["show", "set", "reset"])
        parser.add_argument("assignments", nargs="*", help="key=value, for set")

    def handle(self, *args, action: str, assignments: list[str], **options) -> None:
        if action == "set":
            if not assignments:
                raise CommandError(f"set needs key=value pairs. Keys: {', '.join(SandboxSettings.FIELDS)}")
            changes = {}
            for item in assignments:
                name, sep, raw = item.partition("=")
                if not sep or name not in SandboxSettings.FIELDS:
                    raise CommandError(f"{item!r}: expected key=value with key in {', '.join(SandboxSettings.FIELDS)}")
                changes[name] = parse_value(name, raw)
            try:
                row = sandbox.sandbox_update(changes=changes, via="command")
            except ValidationError as exc:
                raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        elif action == "reset":
            row = sandbox.sandbox_reset(via="command")
        else:
            row = SandboxSettings.load()
        self.stdout.write(json.dumps(row.as_dict(), indent=2))
        # Whether the workers run it (set and reset wait for them, at most a few seconds), on stderr: stdout is JSON.
        applied = sandbox.sandbox_applied() if action == "show" else sandbox.wait_applied(row.version)
        self.stderr.write(applied.text())
