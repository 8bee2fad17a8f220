"""Trades' references to their market, orders and orgs checked once per statement.

The engine inserts a batch's trades in one statement, and every trade fired five foreign-key
checks at commit, each a lookup and a row lock on its parent: a batch names one market, a few
orgs, and orders the engine itself holds locked. core.references keeps the same rule with one
query per reference and statement (its docstring says how).
"""

import django.db.models.deletion
from django.db import migrations, models

from core.references import Reference, references_install, references_uninstall

REFERENCES = [
    Reference("marketplace_trade", "market_id", "marketplace_market"),
    Reference("marketplace_trade", "taker_order_id", "marketplace_order"),
    Reference("marketplace_trade", "maker_order_id", "marketplace_order"),
    Reference("marketplace_trade", "buyer_org_id", "accounts_org"),
    Reference("marketplace_trade", "seller_org_id", "accounts_org"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("marketplace", "0005_leaner_order_trade_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="trade",
            name="buyer_org",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="trade",
            name="maker_order",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="maker_trades",
                to="marketplace.order",
            ),
        ),
        migrations.AlterField(
            model_name="trade",
            name="market",
            field=models.ForeignKey(
                db_constraint=False,
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
                db_constraint=False,
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
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="taker_trades",
                to="marketplace.order",
            ),
        ),
        migrations.RunPython(
            references_install(REFERENCES, name="trade"),
            references_uninstall(REFERENCES, name="trade"),
        ),
    ]
