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
