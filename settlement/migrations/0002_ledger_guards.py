"""Database guards for the ledger, and the platform's accounts.

On PostgreSQL:
- a deferred constraint trigger rejects, at commit, any transaction whose entries do not sum to
  zero or that has fewer than two entries, whatever code wrote them;
- row triggers make ledger entries and transactions append-only (UPDATE and DELETE raise).
SQLite has no deferred triggers; there the services and `ledger_check` are the guard.
"""

from django.db import migrations

PG_INSTALL = """
CREATE FUNCTION settlement_ledger_transaction_balanced() RETURNS trigger AS $$
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

CREATE FUNCTION settlement_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER settlement_ledgerentry_append_only
    BEFORE UPDATE OR DELETE ON settlement_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION settlement_ledger_append_only();

CREATE TRIGGER settlement_ledgertransaction_append_only
    BEFORE UPDATE OR DELETE ON settlement_ledgertransaction
    FOR EACH ROW EXECUTE FUNCTION settlement_ledger_append_only();
"""

PG_REMOVE = """
DROP TRIGGER IF EXISTS settlement_ledgertransaction_append_only ON settlement_ledgertransaction;
DROP TRIGGER IF EXISTS settlement_ledgerentry_append_only ON settlement_ledgerentry;
DROP FUNCTION IF EXISTS settlement_ledger_append_only();
DROP TRIGGER IF EXISTS settlement_ledgerentry_balanced ON settlement_ledgerentry;
DROP FUNCTION IF EXISTS settlement_ledger_transaction_balanced();
"""

PLATFORM_KINDS = ("fees", "stripe_clearing", "adjustments", "rounding")


def install_guards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_INSTALL, params=None)


def remove_guards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_REMOVE, params=None)


def create_platform_accounts(apps, schema_editor):
    account = apps.get_model("settlement", "LedgerAccount")
    for kind in PLATFORM_KINDS:
        account.objects.get_or_create(org=None, kind=kind, currency="USD")


def remove_platform_accounts(apps, schema_editor):
    account = apps.get_model("settlement", "LedgerAccount")
    account.objects.filter(org=None, kind__in=PLATFORM_KINDS, entries__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("settlement", "0001_initial")]

    operations = [
        migrations.RunPython(install_guards, remove_guards),
        migrations.RunPython(create_platform_accounts, remove_platform_accounts),
    ]
