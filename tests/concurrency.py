"""Running the same work from several threads at once, for the PostgreSQL race tests."""

import threading

from django.db import connection


def race(workers: int, work) -> list:
    """Run `work(i)` in `workers` threads released at once; return each result or exception.

    Each thread has its own database connection (Django's are per thread) and closes it.
    """
    barrier = threading.Barrier(workers)
    results: list = [None] * workers

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as error:
            results[i] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def delete_while_named(write, *, table: str, parent_id: int, child_table: str) -> list[str]:
    """Try to delete a parent while `write` (which names it) is uncommitted, then after.

    `write()` runs inside a transaction of its own thread, held open while another thread
    deletes row `parent_id` of `table` with a short lock timeout; then the writer commits and
    the delete is tried again. Returns each try's outcome: "waited" (the lock timed out),
    "refused" (a reference from `child_table` kept the row), "deleted", or the error's text.
    """
    from django.db import IntegrityError, OperationalError, transaction

    written, release, outcomes = threading.Event(), threading.Event(), []

    def write_and_hold() -> None:
        try:
            with transaction.atomic():
                write()
                written.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    def delete(lock_timeout: str) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                cursor.execute(f"DELETE FROM {table} WHERE id = %s", [parent_id])
            outcomes.append("deleted")
        except OperationalError:
            outcomes.append("waited")
        except IntegrityError as error:
            outcomes.append("refused" if child_table in str(error) else str(error))
        finally:
            connection.close()

    def in_thread(target, *args) -> None:
        thread = threading.Thread(target=target, args=args)
        thread.start()
        thread.join(timeout=30)

    holder = threading.Thread(target=write_and_hold)
    holder.start()
    assert written.wait(timeout=30)
    in_thread(delete, "500ms")
    release.set()
    holder.join(timeout=30)
    in_thread(delete, "5s")
    return outcomes
