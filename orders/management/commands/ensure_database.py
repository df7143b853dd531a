from __future__ import annotations

import psycopg
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from psycopg import sql


class Command(BaseCommand):
    help = "Create the configured PostgreSQL database if it does not exist yet."

    def handle(self, *args, **options) -> None:
        params = connection.settings_dict
        try:
            with psycopg.connect(
                host=params["HOST"],
                port=params["PORT"] or 5432,
                user=params["USER"],
                password=params["PASSWORD"] or None,
                dbname="postgres",
                autocommit=True,
                connect_timeout=5,
            ) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [params["NAME"]]).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(params["NAME"])))
                    self.stdout.write(f"created database {params['NAME']}")
        except psycopg.OperationalError as exc:
            raise CommandError(f"PostgreSQL is not reachable at {params['HOST']}:{params['PORT']}: {exc}") from exc
