"""Drop the foreign keys' own indexes on orders and trades where a composite index starts with
the same column: every order row is rewritten by the engine and every trade is written in its
batches, and each redundant index cost them an insert."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("marketplace", "0004_market_reconciliation"),
    ]

    operations = [
        migrations.AlterField(
            model_name="order",
            name="market",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="orders",
                to="marketplace.market",
            ),
        ),
        migrations.AlterField(
            model_name="order",
            name="org",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="orders",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="trade",
            name="buyer_org",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="trade",
            name="market",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="trades",
                to="marketplace.market",
            ),
        ),
        migrations.AlterField(
            model_name="trade",
            name="seller_org",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="trade",
            name="taker_order",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="taker_trades",
                to="marketplace.order",
            ),
        ),
    ]
