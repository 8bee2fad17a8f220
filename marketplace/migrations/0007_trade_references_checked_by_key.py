"""Trades' per-statement reference check looks each named parent up by its key.

Migration 0006's check found the parents by a semi-join, which PL/pgSQL plans once per session;
planned while the orders table was small, the plan kept scanning the whole table on every later
insert. core.references' `_check_by_key` says why its form cannot.
"""

import importlib

from django.db import migrations

from core.references import references_checked_by_key

REFERENCES = importlib.import_module(
    "marketplace.migrations.0006_trade_references_per_statement"
).REFERENCES


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0006_trade_references_per_statement"),
    ]

    operations = [references_checked_by_key(REFERENCES)]
