"""What PostgreSQL's plans did inside a test's transaction, read from its statistics views."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


def _counts(view: str, name: str, count: str, names: list[str]) -> dict[str, int]:
    """This transaction's `count` column of statistics view `view`, by `name`, 0 when absent."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {name}, {count} FROM {view} WHERE {name} = ANY(%s)",
            [names],
        )
        counts = dict(cursor.fetchall())
    return {each: counts.get(each, 0) for each in names}


def _sequential_scans(tables: list[str]) -> dict[str, int]:
    return _counts("pg_stat_xact_user_tables", "relname", "seq_scan", tables)


def function_calls(functions: list[str]) -> dict[str, int]:
    """How often this transaction has called each PL/pgSQL function (track_functions on)."""
    return _counts("pg_stat_xact_user_functions", "funcname", "calls", functions)


@contextmanager
def sequential_scans(tables: list[str]) -> Iterator[dict[str, int]]:
    """Counts, by table, the sequential scans of `tables` run inside the block.

    Read from `pg_stat_xact_user_tables`, which counts the current transaction's own scans, so
    the block must run inside the test's transaction. The dict is filled when the block ends.
    """
    scans: dict[str, int] = {}
    before = _sequential_scans(tables)
    yield scans
    after = _sequential_scans(tables)
    scans.update({table: after[table] - before[table] for table in tables})
