"""References checked once per statement, where a foreign key checks them once per row.

A foreign key checks each inserted row on its own: one lookup of the parent, and one row lock
on it (`FOR KEY SHARE`, which writes to the parent's page and to the WAL), per reference and
row. A batch that names a handful of parents a thousand times (a market's trades name one
market and a few orgs; a batch of postings names a few accounts) pays a thousand times for what
one query per reference decides. The triggers built here keep the foreign key's rule at that
price:

- after each INSERT statement on the child, one query per reference takes the distinct parents
  the new rows name and locks them `FOR KEY SHARE`, as a foreign key check does, so no
  concurrent transaction can delete them until this one ends; a parent missing raises a
  foreign-key violation (SQLSTATE 23503, an IntegrityError in Django);
- an UPDATE that changes a reference column is checked the same way, row by row: a row
  trigger whose WHEN clause PostgreSQL evaluates without calling it, so the updates the
  application makes (which never move a row to another parent) cost nothing;
- before a parent row is deleted or its id changed, a child row that names it refuses it, as
  the foreign key's NO ACTION did.

A reference to an append-only parent (`is_append_only`: its rows are never updated or
deleted, which a guard of its own enforces) is checked without the lock, there being no
delete to keep out, and needs no guard on the parent.

A foreign key checks a parent deleted by a concurrent transaction against a snapshot of its own
even in REPEATABLE READ; these triggers rely on READ COMMITTED (Django's default), where the
lock waits for the deleter and then sees the parent gone or the child present. TRUNCATE of a
parent is not checked. SQLite, the embedded single-writer mode, gets row triggers on the
child's inserts and updates only: there a parent's delete is refused by Django (on_delete
PROTECT) alone, because the test runner empties SQLite table by table, in no set order, and a
guard would stop it.

Used by migrations, so what these functions write must never change for a migration already
applied: a different rule is a new function here and a new migration.
"""

from dataclasses import dataclass

# ruff: noqa: S608 (the SQL is built from migrations' own table and column names, no input)


@dataclass(frozen=True)
class Reference:
    child: str  # table
    column: str
    parent: str  # table, whose key is `id`
    is_append_only: bool = False


def _children(references) -> list[str]:
    return sorted({reference.child for reference in references})


def _parents(references) -> list[str]:
    return sorted({r.parent for r in references if not r.is_append_only})


def _missing_parent_error(reference: Reference) -> str:
    return f"""
        RAISE EXCEPTION 'insert or update on table "{reference.child}" violates its reference to "{reference.parent}"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = 'A {reference.column} names no row of {reference.parent}.';"""  # noqa: E501


def _check_function(child: str, checks: list[str], *, replace: bool = False, settings="") -> str:
    create = "CREATE OR REPLACE FUNCTION" if replace else "CREATE FUNCTION"
    return f"""
{create} {child}_references_check() RETURNS trigger LANGUAGE plpgsql{settings} AS $$
DECLARE
    wanted bigint;
    found bigint;
BEGIN{"".join(checks)}
    RETURN NULL;
END
$$;
"""


def _check_by_semi_join(reference: Reference) -> str:
    """The first form: the parents found by a semi-join, which the planner may run as a hash
    join over a scan of the whole parent table (see `_check_by_key`)."""
    lock = "" if reference.is_append_only else "\n           FOR KEY SHARE OF parent"
    return f"""
    SELECT count(*) INTO wanted FROM (SELECT DISTINCT {reference.column} FROM new_rows) AS named;
    SELECT count(*) INTO found FROM (
        SELECT parent.id FROM {reference.parent} AS parent
         WHERE parent.id IN (SELECT {reference.column} FROM new_rows){lock}
    ) AS present;
    IF found <> wanted THEN{_missing_parent_error(reference)}
    END IF;"""


BY_KEY_SETTINGS = "\n    SET enable_seqscan = off"


def _check_by_key(reference: Reference) -> str:
    """Each distinct parent the statement names, looked up by its key, one probe each.

    PL/pgSQL plans a trigger's query once per session and keeps the plan. The semi-join form
    planned while a parent table was small (a new database, a test, a benchmark's first batch)
    kept a hash join over a scan of the whole table, so every later statement read the parent
    table through, growing with it: a two-entry ledger posting read every ledger transaction.
    The lateral subquery with its LIMIT cannot be flattened into a join, so the plan is a loop
    over the named keys with one probe of the parent each; the function runs with sequential
    scans off (`BY_KEY_SETTINGS`), so the probe is of the primary key, whatever the planner
    believed of the table's size when it planned. A NULL names no parent and is not checked, as
    in a foreign key.
    """
    lock = "" if reference.is_append_only else " FOR KEY SHARE"
    return f"""
    SELECT count(*), count(present.id) INTO wanted, found
      FROM (SELECT DISTINCT {reference.column} AS id FROM new_rows
             WHERE {reference.column} IS NOT NULL) AS named
      LEFT JOIN LATERAL (
            SELECT parent.id FROM {reference.parent} AS parent
             WHERE parent.id = named.id LIMIT 1{lock}
      ) AS present ON true;
    IF found <> wanted THEN{_missing_parent_error(reference)}
    END IF;"""


def _statement_check(child: str, references) -> str:
    checks = [_check_by_semi_join(reference) for reference in references]
    trigger = f"""CREATE TRIGGER {child}_references_on_insert AFTER INSERT ON {child}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {child}_references_check();
"""
    return _check_function(child, checks) + trigger


def _row_check_on_update(child: str, references) -> str:
    checks = []
    for reference in references:
        lock = "" if reference.is_append_only else " FOR KEY SHARE"
        checks.append(
            f"""
    IF NEW.{reference.column} IS DISTINCT FROM OLD.{reference.column} AND NEW.{reference.column} IS NOT NULL
       AND NOT EXISTS (SELECT FROM {reference.parent} WHERE id = NEW.{reference.column}{lock}) THEN{_missing_parent_error(reference)}
    END IF;"""  # noqa: E501
        )
    changed = " OR ".join(
        f"NEW.{reference.column} IS DISTINCT FROM OLD.{reference.column}"
        for reference in references
    )
    return f"""
CREATE FUNCTION {child}_references_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{"".join(checks)}
    RETURN NULL;
END
$$;
CREATE TRIGGER {child}_references_on_update AFTER UPDATE ON {child}
    FOR EACH ROW WHEN ({changed})
    EXECUTE FUNCTION {child}_references_moved();
"""


def parent_guard(parent: str, references, *, name: str) -> str:
    """PostgreSQL's row trigger refusing to delete (or renumber) a parent a child names."""
    checks = "\n".join(
        f"""
    IF EXISTS (SELECT FROM {reference.child} WHERE {reference.column} = OLD.id) THEN
        RAISE EXCEPTION 'delete or update on table "{parent}" violates a reference from "{reference.child}"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = 'Key (id)=(' || OLD.id || ') is still named by {reference.child}.{reference.column}.';
    END IF;"""  # noqa: E501
        for reference in references
        if reference.parent == parent
    )
    return f"""
CREATE FUNCTION {parent}_{name}_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
        RETURN NEW;
    END IF;{checks}
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER {parent}_{name}_guard BEFORE DELETE OR UPDATE OF id ON {parent}
    FOR EACH ROW EXECUTE FUNCTION {parent}_{name}_guard();
"""


def sqlite_triggers(references) -> list[str]:
    """SQLite's row triggers refusing a child's insert or update that names a missing parent."""
    statements = []
    for child in _children(references):
        missing = " OR ".join(
            f"NOT EXISTS (SELECT 1 FROM {r.parent} WHERE id = NEW.{r.column})"
            for r in references
            if r.child == child
        )
        for event in ("INSERT", "UPDATE"):
            statements.append(
                f"CREATE TRIGGER {child}_references_on_{event.lower()} BEFORE {event} ON {child}"
                f" WHEN {missing}"
                " BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed'); END"
            )
    return statements


def references_install(references: list[Reference], *, name: str):
    """A RunPython forward function installing the checks of `references`.

    `name` tells this migration's parent guards from other migrations' on the same parent.
    """

    def install(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            for child in _children(references):
                own = [r for r in references if r.child == child]
                schema_editor.execute(_statement_check(child, own))
                schema_editor.execute(_row_check_on_update(child, own))
            for parent in _parents(references):
                schema_editor.execute(parent_guard(parent, references, name=name))
        elif vendor == "sqlite":
            for statement in sqlite_triggers(references):
                schema_editor.execute(statement)

    return install


def references_uninstall(references: list[Reference], *, name: str):
    """The RunPython backward function of references_install(references, name=name)."""

    def uninstall(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            for child in _children(references):
                schema_editor.execute(f"DROP FUNCTION {child}_references_check() CASCADE")
                schema_editor.execute(f"DROP FUNCTION {child}_references_moved() CASCADE")
            for parent in _parents(references):
                schema_editor.execute(f"DROP FUNCTION {parent}_{name}_guard() CASCADE")
        elif vendor == "sqlite":
            for child in _children(references):
                for event in ("insert", "update"):
                    schema_editor.execute(f"DROP TRIGGER {child}_references_on_{event}")

    return uninstall


def sqlite_triggers_suspended(references: list[Reference]) -> tuple:
    """RunPython operations around a SQLite table rebuild that `references`' triggers name.

    SQLite alters a column by building the table anew and renaming it into place, and refuses
    that while a trigger names the table: the triggers are dropped before and made again
    after. Returns (the operation to run before, the one to run after).
    """
    from django.db import migrations

    def drop(apps, schema_editor):
        if schema_editor.connection.vendor == "sqlite":
            for child in _children(references):
                for event in ("insert", "update"):
                    schema_editor.execute(f"DROP TRIGGER {child}_references_on_{event}")

    def create(apps, schema_editor):
        if schema_editor.connection.vendor == "sqlite":
            for statement in sqlite_triggers(references):
                schema_editor.execute(statement)

    return migrations.RunPython(drop, create), migrations.RunPython(create, drop)


def references_checked_by_key(references: list[Reference]):
    """A RunPython operation giving `references`' children `_check_by_key`'s statement check.

    For children whose check an earlier migration made in the semi-join form: the function is
    replaced in place, its triggers stay. Backward puts the semi-join form back.
    """
    from django.db import migrations

    def replace(check, settings):
        def run(apps, schema_editor):
            if schema_editor.connection.vendor != "postgresql":
                return
            for child in _children(references):
                checks = [check(r) for r in references if r.child == child]
                function = _check_function(child, checks, replace=True, settings=settings)
                schema_editor.execute(function)

        return run

    return migrations.RunPython(
        replace(_check_by_key, BY_KEY_SETTINGS), replace(_check_by_semi_join, "")
    )


def update_checks_per_row(references: list[Reference]):
    """A RunPython operation checking `references`' children's updates row by row.

    For children whose UPDATE statements an earlier migration checked like their inserts, all
    rows of every statement (migration 0015 of settlement, the usage rows): the statement
    trigger on UPDATE becomes `_row_check_on_update`'s, which runs only for a row moved to
    another parent. Backward puts the statement trigger back.
    """
    from django.db import migrations

    def forward(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for child in _children(references):
            own = [r for r in references if r.child == child]
            schema_editor.execute(f"DROP TRIGGER {child}_references_on_update ON {child}")
            schema_editor.execute(_row_check_on_update(child, own))

    def backward(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for child in _children(references):
            schema_editor.execute(f"DROP FUNCTION {child}_references_moved() CASCADE")
            schema_editor.execute(
                f"CREATE TRIGGER {child}_references_on_update AFTER UPDATE ON {child}"
                " REFERENCING NEW TABLE AS new_rows"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {child}_references_check()"
            )

    return migrations.RunPython(forward, backward)
