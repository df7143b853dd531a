"""The telemetry models (queue depths, worker and relay heartbeats, supervised processes) move here from `orders`,
in state only: their tables were created by orders' migrations and keep their names (`Meta.db_table`), so nothing is
created, copied or dropped. orders/migrations/0007_telemetry_to_worker.py removes them from orders' state."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("orders", "0006_relay_heartbeat"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="QueueStat",
                    fields=[
                        ("name", models.CharField(max_length=200, primary_key=True, serialize=False)),
                        ("role", models.CharField(max_length=16)),
                        ("position", models.PositiveSmallIntegerField(default=0)),
                        ("ready", models.PositiveIntegerField(default=0)),
                        ("consumers", models.PositiveIntegerField(default=0)),
                        ("observed_at", models.DateTimeField()),
                    ],
                    options={
                        "db_table": "orders_queuestat",
                        "ordering": ["position", "name"],
                    },
                ),
                migrations.CreateModel(
                    name="RelayHeartbeat",
                    fields=[
                        ("name", models.CharField(max_length=200, primary_key=True, serialize=False)),
                        ("hostname", models.CharField(max_length=200)),
                        ("pid", models.PositiveIntegerField()),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("idle", "Idle"),
                                    ("publishing", "Publishing"),
                                    ("unreachable", "Unreachable"),
                                    ("sweeping", "Sweeping"),
                                ],
                                default="idle",
                                max_length=20,
                            ),
                        ),
                        ("detail", models.CharField(blank=True, default="", max_length=300)),
                        (
                            "published",
                            models.PositiveBigIntegerField(
                                default=0, help_text="Outbox rows published since it started."
                            ),
                        ),
                        (
                            "rate",
                            models.FloatField(
                                default=0.0, help_text="Rows published per second over the last few seconds."
                            ),
                        ),
                        ("last_publish_at", models.DateTimeField(blank=True, null=True)),
                        ("started_at", models.DateTimeField()),
                        ("last_seen", models.DateTimeField()),
                    ],
                    options={
                        "db_table": "orders_relayheartbeat",
                    },
                ),
                migrations.CreateModel(
                    name="SupervisedProcess",
                    fields=[
                        ("name", models.CharField(max_length=50, primary_key=True, serialize=False)),
                        ("role", models.CharField(max_length=20)),
                        ("pid", models.PositiveIntegerField(blank=True, null=True)),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("starting", "Starting"),
                                    ("running", "Running"),
                                    ("crashed", "Crashed"),
                                    ("stopping", "Stopping"),
                                    ("stopped", "Stopped"),
                                ],
                                max_length=20,
                            ),
                        ),
                        ("restarts", models.PositiveIntegerField(default=0)),
                        ("last_exit", models.CharField(blank=True, default="", max_length=200)),
                        ("last_exit_at", models.DateTimeField(blank=True, null=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        "db_table": "orders_supervisedprocess",
                    },
                ),
                migrations.CreateModel(
                    name="WorkerHeartbeat",
                    fields=[
                        ("name", models.CharField(max_length=200, primary_key=True, serialize=False)),
                        ("hostname", models.CharField(max_length=200)),
                        ("pid", models.PositiveIntegerField()),
                        ("current_order", models.UUIDField(blank=True, null=True)),
                        ("holding", models.JSONField(blank=True, default=list)),
                        ("processed", models.PositiveIntegerField(default=0)),
                        ("unacked", models.PositiveIntegerField(default=0)),
                        ("started_at", models.DateTimeField()),
                        ("last_seen", models.DateTimeField()),
                    ],
                    options={
                        "db_table": "orders_workerheartbeat",
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
