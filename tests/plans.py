"""What PostgreSQL's plans did inside a test's transaction, read from its statistics views."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


def _sequential_scans(tables: list[str]) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE relname = ANY(%s)",
            [tables],
        )
        counts = dict(cursor.fetchall())
    return {table: counts.get(table, 0) for table in tables}


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
