"""The permission that lets staff make ledger adjustments in the admin.

Also records the `trade` transaction kind added to LedgerTransaction.Kind (choices only; no
schema change), so `makemigrations --check` stays clean.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("settlement", "0002_ledger_guards")]

    operations = [
        migrations.AlterModelOptions(
            name="ledgertransaction",
            options={"permissions": [("make_adjustment", "Can make balanced ledger adjustments")]},
        ),
        migrations.AlterField(
            model_name="ledgertransaction",
            name="kind",
            field=models.CharField(
                choices=[
                    ("topup", "Card top-up"),
                    ("topup_refund", "Card refund"),
                    ("hold", "Hold placed"),
                    ("hold_release", "Hold released"),
                    ("hold_capture", "Hold captured"),
                    ("adjustment", "Manual adjustment"),
                    ("transfer", "Transfer"),
                    ("trade", "Trade settled into escrow"),
                ],
                max_length=24,
            ),
        ),
    ]
