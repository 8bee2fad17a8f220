"""The balanced-transaction guard of 0002, checked once per transaction a statement touches.

0002 checked at commit, from a deferred trigger on every ledger entry, that the entry's
transaction sums to zero over two entries or more: a transaction of three entries was summed
three times, each time through a trigger call and a query of its own. The matching engine
writes some three thousand entries a batch, and those checks were about a tenth of the database's
time for a batch (the engine benchmark: 0.4 s of the server's CPU over 30,000 orders).

Now, after each statement that inserts entries, one set-based query sums every transaction the
statement touched, once each. A transaction that balances there needs nothing more; one that
does not (its legs written by several statements, or an entry added to an old transaction) is
put in `settlement_ledger_balance_pending`, whose deferred trigger checks it again at commit,
as 0002 did, and removes the row. The rule and the moment of refusal are the same as before:
any transaction whose entries do not sum to zero or number fewer than two when the database
transaction commits is refused, whatever code wrote them. It stays sound because entries are
append-only (no UPDATE or DELETE, 0002), so a transaction found balanced can only change through
a later insert, and that insert's statement sums it again; a rolled-back savepoint takes its
entries and its pending rows with it.

The new statement trigger keeps the name `settlement_ledgerentry_balanced`, so disabling the
guard by name (as a test of `ledger_check` does) still disables it. SQLite has no such triggers;
there the services and `ledger_check` are the guard.
"""

from django.db import migrations

PG_INSTALL = """
CREATE UNLOGGED TABLE settlement_ledger_balance_pending (
    transaction_id bigint NOT NULL
);

CREATE OR REPLACE FUNCTION settlement_ledger_transaction_balanced() RETURNS trigger AS $$
DECLARE
    total bigint;
    legs integer;
BEGIN
    SELECT COALESCE(SUM(amount_micro), 0), COUNT(*) INTO total, legs
      FROM settlement_ledgerentry WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 OR legs < 2 THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced: % entries summing to %',
            NEW.transaction_id, legs, total USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM settlement_ledger_balance_pending WHERE transaction_id = NEW.transaction_id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER settlement_ledger_balance_pending_check
    AFTER INSERT ON settlement_ledger_balance_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION settlement_ledger_transaction_balanced();

-- The touched transactions' entries in one index scan (a sorted array of keys), summed per
-- transaction; an array of keys is an index scan whatever the planner thinks of its size.
CREATE FUNCTION settlement_ledger_entries_balanced() RETURNS trigger AS $$
BEGIN
    INSERT INTO settlement_ledger_balance_pending (transaction_id)
    SELECT entry.transaction_id
      FROM settlement_ledgerentry AS entry
     WHERE entry.transaction_id = ANY(ARRAY(
            SELECT DISTINCT transaction_id FROM new_entries ORDER BY transaction_id))
     GROUP BY entry.transaction_id
    HAVING SUM(entry.amount_micro) <> 0 OR COUNT(*) < 2;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER settlement_ledgerentry_balanced ON settlement_ledgerentry;

CREATE TRIGGER settlement_ledgerentry_balanced
    AFTER INSERT ON settlement_ledgerentry
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_ledger_entries_balanced();
"""

PG_REMOVE = """
DROP TRIGGER settlement_ledgerentry_balanced ON settlement_ledgerentry;
DROP FUNCTION settlement_ledger_entries_balanced();
DROP TABLE settlement_ledger_balance_pending;

CREATE OR REPLACE FUNCTION settlement_ledger_transaction_balanced() RETURNS trigger AS $$
DECLARE
    total bigint;
    legs integer;
BEGIN
    SELECT COALESCE(SUM(amount_micro), 0), COUNT(*) INTO total, legs
      FROM settlement_ledgerentry WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 OR legs < 2 THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced: % entries summing to %',
            NEW.transaction_id, legs, total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER settlement_ledgerentry_balanced
    AFTER INSERT ON settlement_ledgerentry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION settlement_ledger_transaction_balanced();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_INSTALL, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_REMOVE, params=None)


class Migration(migrations.Migration):
    dependencies = [("settlement", "0013_usage_draw_hour")]

    operations = [migrations.RunPython(install, remove)]
