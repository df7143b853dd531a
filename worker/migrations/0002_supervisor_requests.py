from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("worker", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="ServiceLink",
            fields=[
                ("name", models.CharField(max_length=20, primary_key=True, serialize=False)),
                ("target", models.CharField(max_length=200)),
                ("proxy_ports", models.CharField(max_length=200)),
                ("cut", models.BooleanField(default=False)),
                ("cut_at", models.DateTimeField(blank=True, null=True)),
                ("restore_at", models.DateTimeField(blank=True, null=True)),
                ("updated_at", models.DateTimeField()),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.CreateModel(
            name="SupervisorRequest",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("kill", "kill (SIGKILL)"),
                            ("stop", "stop (SIGTERM)"),
                            ("cut", "cut"),
                            ("restore", "restore"),
                        ],
                        max_length=20,
                    ),
                ),
                ("target", models.CharField(max_length=50)),
                ("requested_by", models.CharField(blank=True, default="", max_length=150)),
                ("requested_at", models.DateTimeField(auto_now_add=True)),
                (
                    "state",
                    models.CharField(
                        choices=[("pending", "Pending"), ("done", "Done"), ("failed", "Failed")],
                        default="pending",
                        max_length=20,
                    ),
                ),
                ("result", models.CharField(blank=True, default="", max_length=300)),
                ("done_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ["-requested_at", "-id"],
                "indexes": [
                    models.Index(
                        condition=models.Q(("state", "pending")), fields=["id"], name="supervisor_request_pending"
                    )
                ],
            },
        ),
    ]
