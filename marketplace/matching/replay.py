"""Run JSON-lines commands through one `OrderBook` and write its events as JSON lines.

    python -m marketplace.matching.replay < commands.jsonl > events.jsonl

One command per line:

    {"op": "new", "id": "o1", "org": "a", "side": "buy", "type": "limit", "price": 1200,
     "lots": 5, "tif": "GTC", "post_only": false, "stp": "expire_taker"}
    {"op": "cancel", "id": "o1"}
    {"op": "reduce", "id": "o1", "by": 2}

`price` is left out (or null) for market orders; `tif`, `post_only` and `stp` default to "GTC",
false and "expire_taker". Each event goes out as one compact JSON object per line, in order, and
nothing else is written. Values the book can judge (an unknown side, lots of 0, a string price)
get the book's own rejection. A line the book cannot be asked about at all (not JSON, not an
object, an unknown op or key, a missing field, an id or org that is not a string or an integer)
gets `{"event": "rejected", "id": ..., "reason": "malformed"}`, with the id if it was a usable
one and null otherwise. Blank lines are skipped.
"""

import json
import sys
from collections.abc import Iterable
from typing import TextIO

from marketplace.matching.book import EXPIRE_TAKER, GTC, Event, Order, OrderBook, Rejected

_NEW_REQUIRED = frozenset({"op", "id", "org", "side", "type", "lots"})
_NEW_ALLOWED = _NEW_REQUIRED | {"price", "tif", "post_only", "stp"}
_CANCEL_KEYS = frozenset({"op", "id"})
_REDUCE_KEYS = frozenset({"op", "id", "by"})


def _is_id(value) -> bool:
    # bool is an int subclass, but `true` is no order id.
    return type(value) is str or type(value) is int


def apply_line(book: OrderBook, line: str | bytes) -> list[Event]:
    """Parse one command line and run it on `book`; a malformed line is rejected, never raised."""
    try:
        command = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        return [Rejected(None, "malformed")]
    if not isinstance(command, dict):
        return [Rejected(None, "malformed")]
    order_id = command.get("id")
    if not _is_id(order_id):
        return [Rejected(None, "malformed")]

    keys = command.keys()
    op = command.get("op")
    if op == "new":
        if not (_NEW_REQUIRED <= keys <= _NEW_ALLOWED) or not _is_id(command["org"]):
            return [Rejected(order_id, "malformed")]
        order = Order(
            id=order_id,
            org=command["org"],
            side=command["side"],
            type=command["type"],
            price_ticks=command.get("price"),
            lots=command["lots"],
            tif=command.get("tif", GTC),
            post_only=command.get("post_only", False),
            stp=command.get("stp", EXPIRE_TAKER),
        )
        return book.submit(order)
    if op == "cancel" and keys == _CANCEL_KEYS:
        return book.cancel(order_id)
    if op == "reduce" and keys == _REDUCE_KEYS:
        return book.reduce(order_id, command["by"])
    return [Rejected(order_id, "malformed")]


def replay(lines: Iterable[str | bytes], out: TextIO) -> None:
    book = OrderBook()
    write = out.write
    for line in lines:
        if not line.strip():
            continue
        for event in apply_line(book, line):
            write(json.dumps(event.to_dict(), separators=(",", ":")))
            write("\n")


def main() -> None:
    # Bytes in, so that a line of bad UTF-8 is one malformed command rather than a crash.
    replay(sys.stdin.buffer, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
