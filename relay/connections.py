"""The relay's own PostgreSQL connections, used from its event loop.

Admitting and settling a request are one statement each on PostgreSQL (relay.fast_path), so
they run on asynchronous autocommit connections of the event loop: no hop to a worker thread
and back (which waits for the interpreter lock behind the loop's own work), no BEGIN and COMMIT
round trips. The connections take Django's settings for the default database, so the relay
talks to the same database as its ORM path, tests' databases included.

A connection that broke is dropped, and the next request opens a new one. Statements are
prepared by the driver on first use per connection (server-side binding), so PostgreSQL plans
each of them once per connection. Like ledger.py's prepared statement, this needs a session of
its own on the server, not a pooler in transaction mode.
"""

import asyncio
import contextlib

import psycopg
from django.db import connections
from psycopg.pq import TransactionStatus


def _connection_params() -> dict:
    params = dict(connections["default"].get_connection_params())
    # Django's own cursor class and adapters are for its ORM; these connections bind on the
    # server and keep the driver's adapters (timezone-aware datetimes, ints, text, UUIDs).
    for name in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(name, None)
    return params


class AsyncConnections:
    """Up to `size` autocommit connections, each lent to one caller at a time."""

    def __init__(self, size: int):
        self.size = size
        self.idle: list[psycopg.AsyncConnection] = []
        self.lent: set[psycopg.AsyncConnection] = set()
        self.slots: asyncio.Semaphore | None = None

    async def _open(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            **_connection_params(), autocommit=True, prepare_threshold=0
        )

    @contextlib.asynccontextmanager
    async def connection(self):
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.size)
        async with self.slots:
            connection = self.idle.pop() if self.idle else await self._open()
            self.lent.add(connection)
            try:
                yield connection
            finally:
                self.lent.discard(connection)
                # A statement cut short (a cancelled request) may leave the session busy.
                if connection.info.transaction_status != TransactionStatus.IDLE:
                    await connection.close()
                else:
                    self.idle.append(connection)

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            await connection.close()
