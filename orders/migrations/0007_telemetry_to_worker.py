"""The telemetry models move to the `worker` app (worker/migrations/0001_initial.py), in state only: their tables
stay, with their names and rows, and now belong to worker's models."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0006_relay_heartbeat"),
        ("worker", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="QueueStat"),
                migrations.DeleteModel(name="RelayHeartbeat"),
                migrations.DeleteModel(name="SupervisedProcess"),
                migrations.DeleteModel(name="WorkerHeartbeat"),
            ],
            database_operations=[],
        ),
    ]
