"""Entitlements' and ledger entries' references checked once per statement.

The engine writes a batch's entitlements and postings in a few statements; each row fired a
foreign-key check per reference at commit, a lookup and a row lock on the parent, though the
batch names one market, a few orgs and a few accounts. core.references keeps the same rule with
one query per reference and statement (its docstring says how). Ledger transactions are
append-only (migration 0002 refuses their updates and deletes), so an entry's reference to its
transaction is checked without a lock. An entitlement's trade is new in the same transaction,
one per row, and stays a foreign key.
"""

import django.db.models.deletion
from django.db import migrations, models

from core.references import (
    Reference,
    references_install,
    references_uninstall,
    sqlite_triggers_suspended,
)

REFERENCES = [
    Reference("settlement_entitlement", "market_id", "marketplace_market"),
    Reference("settlement_entitlement", "buyer_org_id", "accounts_org"),
    Reference("settlement_entitlement", "provider_org_id", "accounts_org"),
    Reference("settlement_ledgerentry", "account_id", "settlement_ledgeraccount"),
    Reference(
        "settlement_ledgerentry",
        "transaction_id",
        "settlement_ledgertransaction",
        is_append_only=True,
    ),
]

# Migration 0015's SQLite trigger on usage draws names the entitlements' table, which SQLite
# builds anew to alter its columns.
DRAW_TRIGGERS_OFF, DRAW_TRIGGERS_ON = sqlite_triggers_suspended(
    [Reference("settlement_usagedraw", "entitlement_id", "settlement_entitlement")]
)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("marketplace", "0006_trade_references_per_statement"),
        ("settlement", "0015_usage_references_per_statement"),
    ]

    operations = [
        DRAW_TRIGGERS_OFF,
        migrations.AlterField(
            model_name="entitlement",
            name="buyer_org",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entitlements_bought",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="entitlement",
            name="market",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entitlements",
                to="marketplace.market",
            ),
        ),
        migrations.AlterField(
            model_name="entitlement",
            name="provider_org",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entitlements_sold",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entries",
                to="settlement.ledgeraccount",
            ),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="transaction",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entries",
                to="settlement.ledgertransaction",
            ),
        ),
        DRAW_TRIGGERS_ON,
        migrations.RunPython(
            references_install(REFERENCES, name="entitlement_ledger"),
            references_uninstall(REFERENCES, name="entitlement_ledger"),
        ),
    ]
