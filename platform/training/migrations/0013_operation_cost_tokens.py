from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0012_run_expert_layout"),
    ]

    operations = [
        migrations.AddField(
            model_name="operation",
            name="cost_tokens",
            field=models.BigIntegerField(default=1),
        ),
    ]
