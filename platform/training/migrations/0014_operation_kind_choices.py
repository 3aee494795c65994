from django.db import migrations, models


class Migration(migrations.Migration):
    """`Operation.kind` names its values (a TextChoices); the stored strings are unchanged."""

    dependencies = [
        ("training", "0013_operation_cost_tokens"),
    ]

    operations = [
        migrations.AlterField(
            model_name="operation",
            name="kind",
            field=models.CharField(
                choices=[
                    ("create_model", "Create Model"),
                    ("load_weights", "Load Weights"),
                    ("forward_backward", "Forward Backward"),
                    ("optim_step", "Optim Step"),
                    ("save_weights", "Save Weights"),
                    ("save_weights_for_sampler", "Save Weights For Sampler"),
                    ("save_weights_external", "Save Weights External"),
                    ("sample", "Sample"),
                ],
                max_length=40,
            ),
        ),
    ]
