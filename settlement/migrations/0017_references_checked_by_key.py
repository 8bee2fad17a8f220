"""Per-statement reference checks look each named parent up by its key; usage updates per row.

- Migrations 0015 (usage records and draws) and 0016 (entitlements and ledger entries) found a
  statement's parents by a semi-join, which PL/pgSQL plans once per session. Planned while a
  parent table was small, the plan kept scanning the whole table on every later statement: a
  two-entry ledger posting read every ledger transaction. core.references' `_check_by_key`
  says why its form cannot.
- 0015 also checked every UPDATE statement on the usage rows, all rows, though the application
  never moves a record or draw to another parent: a settlement run's update of a million
  records took the distinct markets and orgs of all of them. Those updates are now checked as
  0016's are, by a row trigger whose WHEN clause passes only a row whose reference changed.
"""

import importlib

from django.db import migrations

from core.references import Reference, references_checked_by_key, update_checks_per_row

USAGE_REFERENCES = [
    Reference(*reference)
    for reference in importlib.import_module(
        "settlement.migrations.0015_usage_references_per_statement"
    ).REFERENCES
]
ENTITLEMENT_AND_LEDGER_REFERENCES = importlib.import_module(
    "settlement.migrations.0016_entitlement_and_ledger_references_per_statement"
).REFERENCES


class Migration(migrations.Migration):
    dependencies = [
        ("settlement", "0016_entitlement_and_ledger_references_per_statement"),
    ]

    operations = [
        references_checked_by_key(USAGE_REFERENCES + ENTITLEMENT_AND_LEDGER_REFERENCES),
        update_checks_per_row(USAGE_REFERENCES),
    ]
