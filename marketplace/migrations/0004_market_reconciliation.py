from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0003_order_reductions"),
    ]

    operations = [
        migrations.AddField(
            model_name="market",
            name="reconcile_tolerance_bp",
            field=models.PositiveIntegerField(
                default=200,
                help_text="How far another report may be from the primary meter, in bp.",
            ),
        ),
        migrations.AddField(
            model_name="market",
            name="reconcile_floor_tokens",
            field=models.BigIntegerField(
                default=1000,
                help_text="A difference up to this many billable tokens always passes.",
            ),
        ),
        migrations.AddField(
            model_name="market",
            name="report_grace_minutes",
            field=models.PositiveIntegerField(
                default=60, help_text="How long after an hour ends its reports may still arrive."
            ),
        ),
        migrations.AddConstraint(
            model_name="market",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("reconcile_tolerance_bp__lte", 10000),
                    ("reconcile_floor_tokens__gte", 0),
                    ("report_grace_minutes__lte", 10080),
                ),
                name="market_reconciliation_terms_valid",
            ),
        ),
    ]
