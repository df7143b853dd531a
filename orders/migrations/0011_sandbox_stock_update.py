from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0010_sandbox_version"),
    ]

    operations = [
        migrations.AddField(
            model_name="sandboxsettings",
            name="stock_update",
            field=models.CharField(
                choices=[
                    ("guarded", "guarded (safe: one conditional UPDATE)"),
                    (
                        "read_modify_write",
                        "read-modify-write (unsafe: read, compute, write back; a lost update)",
                    ),
                ],
                default="guarded",
                help_text="UNSAFE when read_modify_write: the reserve step reads the stock, computes in Python and "
                "writes it back, without a lock: two workers reserving at once both write what they read, and stock "
                "is oversold.",
                max_length=20,
            ),
        ),
    ]
