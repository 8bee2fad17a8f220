"""Usage rows' references to their market, orgs and entitlement checked once per statement.

A batch of 1,000 usage records and their draws fired 5,000 foreign-key checks at commit, one
per reference and row: more than half of the database's CPU for the batch. But a batch names
one market, one buyer, one provider and a few entitlements. Those four foreign keys become
triggers that keep the same rule:

- after each statement that inserts or updates usage records or draws, one query per reference
  takes the distinct parents the statement names and locks them `FOR KEY SHARE`, as a foreign
  key check does, so no concurrent transaction can delete them until this one ends; a parent
  missing is a foreign-key violation (SQLSTATE 23503, an IntegrityError in Django);
- before a parent row is deleted (or its id changed), a usage row that names it refuses it, as
  the foreign key's NO ACTION did.

A draw's reference to its record stays a foreign key: the records are new in the same
transaction, a thousand distinct parents a batch, and locking each costs what its check does.

A foreign key checks a parent deleted by a concurrent transaction against a snapshot of its own
even in REPEATABLE READ; these triggers rely on READ COMMITTED (Django's default), where the
lock waits for the deleter and then sees the parent gone or the child present. Orgs, markets
and entitlements are never deleted by the application (on_delete PROTECT); the parent triggers
are for any other hand on the database. TRUNCATE of a parent is not checked. SQLite, the
embedded single-writer mode, gets row triggers on the usage rows' inserts and updates only:
there a parent's delete is refused by Django (on_delete PROTECT) alone, because the test
runner empties SQLite table by table, in no set order, and a guard would stop it.
"""

from django.db import migrations, models

from core.references import Reference, parent_guard, sqlite_triggers

# ruff: noqa: S608 (the SQL is built from this file's own table and column names, no input)

# (child table, column, parent table) for every reference that was a foreign key.
REFERENCES = [
    ("settlement_usagerecord", "market_id", "marketplace_market"),
    ("settlement_usagerecord", "buyer_org_id", "accounts_org"),
    ("settlement_usagerecord", "provider_org_id", "accounts_org"),
    ("settlement_usagedraw", "entitlement_id", "settlement_entitlement"),
]
SHARED_REFERENCES = [Reference(*reference) for reference in REFERENCES]
CHILDREN = sorted({child for child, _, _ in REFERENCES})
PARENTS = sorted({parent for _, _, parent in REFERENCES})


def _pg_child_check(child: str) -> str:
    checks = "\n".join(
        f"""
    SELECT count(*) INTO wanted FROM (SELECT DISTINCT {column} FROM new_rows) AS named;
    SELECT count(*) INTO found FROM (
        SELECT parent.id FROM {parent} AS parent
         WHERE parent.id IN (SELECT {column} FROM new_rows)
           FOR KEY SHARE OF parent
    ) AS locked;
    IF found <> wanted THEN
        RAISE EXCEPTION 'insert or update on table "{child}" violates its reference to "{parent}"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = 'A {column} names no row of {parent}.';
    END IF;"""
        for name, column, parent in REFERENCES
        if name == child
    )
    return f"""
CREATE FUNCTION {child}_references_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    found bigint;
BEGIN{checks}
    RETURN NULL;
END
$$;
CREATE TRIGGER {child}_references_on_insert AFTER INSERT ON {child}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {child}_references_check();
CREATE TRIGGER {child}_references_on_update AFTER UPDATE ON {child}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {child}_references_check();
"""


def _pg_parent_guard(parent: str) -> str:
    return parent_guard(parent, SHARED_REFERENCES, name="usage")


def _sqlite_triggers() -> list[str]:
    return sqlite_triggers(SHARED_REFERENCES)


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for child in CHILDREN:
            schema_editor.execute(_pg_child_check(child))
        for parent in PARENTS:
            schema_editor.execute(_pg_parent_guard(parent))
    elif schema_editor.connection.vendor == "sqlite":
        for statement in _sqlite_triggers():
            schema_editor.execute(statement)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for child in CHILDREN:
            schema_editor.execute(f"DROP FUNCTION {child}_references_check() CASCADE")
        for parent in PARENTS:
            schema_editor.execute(f"DROP FUNCTION {parent}_usage_guard() CASCADE")
    elif schema_editor.connection.vendor == "sqlite":
        for child in CHILDREN:
            for event in ("insert", "update"):
                schema_editor.execute(f"DROP TRIGGER {child}_references_on_{event}")


class Migration(migrations.Migration):
    dependencies = [
        ("settlement", "0014_ledger_balance_check_per_statement"),
    ]

    operations = [
        migrations.AlterField(
            model_name="usagerecord",
            name="market",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=models.deletion.PROTECT,
                related_name="usage_records",
                to="marketplace.market",
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="buyer_org",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=models.deletion.PROTECT,
                related_name="usage_bought",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="provider_org",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=models.deletion.PROTECT,
                related_name="usage_served",
                to="accounts.org",
            ),
        ),
        migrations.AlterField(
            model_name="usagedraw",
            name="entitlement",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=models.deletion.PROTECT,
                related_name="usage_draws",
                to="settlement.entitlement",
            ),
        ),
        migrations.RunPython(install, uninstall),
    ]
