import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0008_unsafe_modes"),
    ]

    operations = [
        migrations.AddField(
            model_name="sandboxsettings",
            name="bug_rate",
            field=models.FloatField(
                default=0.0,
                help_text="Steps raise an unexpected error (a bug): nacked until the delivery limit parks it.",
                validators=[
                    django.core.validators.MinValueValidator(0.0),
                    django.core.validators.MaxValueValidator(1.0),
                ],
            ),
        ),
    ]
