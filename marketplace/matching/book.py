"""One order book: price-time priority matching, in plain Python, deterministic.

The model
---------
Each side of the book maps a price level to a FIFO queue of resting orders. An incoming order
(the *taker*) meets the opposite side best price first and, within a price, oldest order first;
every trade happens at the resting order's (the *maker's*) price. Prices are integer ticks and
quantities are integer lots; nothing here is a float.

- `GTC` limit orders rest whatever is left after matching. `IOC` orders and all market orders
  never rest: what is left ends `expired`. A market order must be `IOC` or `FOK`.
- `FOK` first walks the book read-only, applying self-trade prevention exactly as execution
  would. If it cannot fill completely it trades nothing, touches no resting order, and expires
  with all its lots.
- `post_only` is only for `GTC` limit orders. One whose price reaches the opposite best price is
  rejected, even if self-trade prevention would have stopped the trade: it would have taken.
- Self-trade prevention (STP) is decided by the taker's mode when it meets a resting order of its
  own org: `expire_taker` expires the taker's remaining lots (a GTC taker does not rest);
  `expire_maker` expires the resting order and matching goes on; `expire_both` expires both;
  `none` lets them trade.
- `reduce` lowers a resting order's lots in place, so it keeps its time priority. Reducing by
  as much as remains, or more, removes the order and emits `reduced` with `lots=0`: the caller
  asked for a reduce and gets one, and `lots=0` tells it the order is gone.
- Ids are opaque hashables. An id accepted (or loaded) by this book is never accepted again,
  even after the order has left the book. A rejected order's id is not remembered, so the
  caller may fix the order and resubmit it under the same id.

Rejections
----------
`submit` checks, in this order, and reports the first that fails: `duplicate_id`,
`invalid_side`, `invalid_type`, `invalid_tif` (unknown, or a market order with GTC),
`invalid_stp`, `invalid_lots` (not an int > 0), `invalid_price` (a limit order without an int
price > 0, or a market order with a price), `invalid_post_only` (not a bool, or set on anything
but a GTC limit order), then `post_only_would_take`. `cancel` and `reduce` reject an id that is
not resting with `unknown_order`; `reduce` first rejects `by_lots` that is not an int > 0 with
`invalid_reduce`.

Events
------
Every call returns the events it caused, in the order they happened. A valid new order gets
`Accepted` first, then its trades and STP expiries, then `Expired` for a remainder that does not
rest. An invalid one gets a single `Rejected` and changes nothing. Events are slotted dataclasses;
`to_dict()` gives their wire form and is meant for the edges (JSON, the database).

Data structures (why it is fast)
--------------------------------
Both sides use the same code through a sort key: asks are keyed by price and bids by minus price,
so on either side the best level has the smallest key, and a taker with limit price `p` crosses
every level whose key is at most `p` (buy) or `-p` (sell). Each side keeps a dict key -> level
and a heap of keys. A level whose last order leaves through matching is popped from the heap
there and then; one emptied by a cancel or reduce stays in the heap until it surfaces (lazy
deletion), and the heap is rebuilt when stale keys outnumber live ones. Likewise a cancelled order
stays in its level's deque with `lots == 0` until matching reaches it, and a level is compacted
when such dead entries pile up. Each level tracks its live lots, so depth is a dict read.
"""

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from heapq import heapify, heappop, heappush, nsmallest
from typing import ClassVar, NamedTuple

BUY = "buy"
SELL = "sell"
LIMIT = "limit"
MARKET = "market"
GTC = "GTC"
IOC = "IOC"
FOK = "FOK"
EXPIRE_TAKER = "expire_taker"
EXPIRE_MAKER = "expire_maker"
EXPIRE_BOTH = "expire_both"
STP_NONE = "none"

# Tuples, not sets: membership then never raises, even for an unhashable value from outside.
SIDES = (BUY, SELL)
TYPES = (LIMIT, MARKET)
TIFS = (GTC, IOC, FOK)
STP_MODES = (EXPIRE_TAKER, EXPIRE_MAKER, EXPIRE_BOTH, STP_NONE)

# A level is compacted once this many cancelled entries sit in it and they are over half of it.
_DEAD_ENTRIES_BEFORE_COMPACTION = 16
# The key heap is rebuilt once it holds this many more entries than twice the live levels.
_STALE_KEYS_SLACK = 64


@dataclass(slots=True)
class Order:
    """A new order as the caller describes it. `price_ticks` is None for market orders."""

    id: Hashable
    org: Hashable
    side: str
    type: str
    price_ticks: int | None
    lots: int
    tif: str = GTC
    post_only: bool = False
    stp: str = EXPIRE_TAKER


# Events. Plain slotted classes rather than tuples, so that equal fields in different kinds of
# event never compare equal, and cheap enough to build in the matching loop.


@dataclass(slots=True)
class Accepted:
    event: ClassVar[str] = "accepted"
    id: Hashable

    def to_dict(self) -> dict:
        return {"event": "accepted", "id": self.id}


@dataclass(slots=True)
class Rejected:
    event: ClassVar[str] = "rejected"
    id: Hashable
    reason: str

    def to_dict(self) -> dict:
        return {"event": "rejected", "id": self.id, "reason": self.reason}


@dataclass(slots=True)
class Trade:
    event: ClassVar[str] = "trade"
    taker: Hashable
    maker: Hashable
    price_ticks: int
    lots: int

    def to_dict(self) -> dict:
        return {
            "event": "trade",
            "taker": self.taker,
            "maker": self.maker,
            "price": self.price_ticks,
            "lots": self.lots,
        }


@dataclass(slots=True)
class Expired:
    """`lots` are the lots that expired."""

    event: ClassVar[str] = "expired"
    id: Hashable
    lots: int

    def to_dict(self) -> dict:
        return {"event": "expired", "id": self.id, "lots": self.lots}


@dataclass(slots=True)
class Cancelled:
    """`lots` are the lots the order still had when it was cancelled."""

    event: ClassVar[str] = "cancelled"
    id: Hashable
    lots: int

    def to_dict(self) -> dict:
        return {"event": "cancelled", "id": self.id, "lots": self.lots}


@dataclass(slots=True)
class Reduced:
    """`lots` are the lots that remain resting; 0 means the reduce removed the order."""

    event: ClassVar[str] = "reduced"
    id: Hashable
    lots: int

    def to_dict(self) -> dict:
        return {"event": "reduced", "id": self.id, "lots": self.lots}


Event = Accepted | Rejected | Trade | Expired | Cancelled | Reduced


class RestingOrder(NamedTuple):
    """A read-only view of one resting order, as `OrderBook` iteration yields it."""

    id: Hashable
    org: Hashable
    side: str
    price_ticks: int
    lots: int


@dataclass(slots=True, frozen=True)
class Preview:
    """What `submit` would do with an order right now, without doing it.

    `lots` would trade for `notional` (sum of price_ticks x lots over those trades).
    `reject_reason` is the reason `submit` would reject the order, else None; the id is not
    checked, since a previewed order usually has none yet.
    """

    lots: int
    notional: int
    reject_reason: str | None = None


class _Resting:
    """A resting order inside the book. `lots == 0` marks one cancelled but not yet unlinked."""

    __slots__ = ("id", "level", "lots", "org", "price_ticks", "side")

    def __init__(self, order_id, org, side, price_ticks, lots, level):
        self.id = order_id
        self.org = org
        self.side = side
        self.price_ticks = price_ticks
        self.lots = lots
        self.level = level


class _Level:
    __slots__ = ("dead", "key", "lots", "orders")

    def __init__(self, key):
        self.key = key
        self.orders = deque()
        self.lots = 0  # live lots only
        self.dead = 0  # entries in `orders` with lots == 0


class _Side:
    """One side of the book. Keys are price ticks for asks and minus price ticks for bids."""

    __slots__ = ("keys", "levels", "name", "sign")

    def __init__(self, name):
        self.name = name
        self.sign = 1 if name == SELL else -1
        self.levels = {}  # key -> _Level
        self.keys = []  # heap of keys; may hold keys whose level is gone

    def best_key(self):
        keys = self.keys
        levels = self.levels
        while keys and keys[0] not in levels:
            heappop(keys)
        return keys[0] if keys else None

    def ascending_keys(self) -> Iterator[int]:
        """Live keys from best to worst, lazily and without touching the heap.

        A heap's parent is never greater than its children, so expanding a frontier of heap
        positions smallest-first visits keys in order; only what the caller consumes is paid for.
        """
        keys = self.keys
        levels = self.levels
        size = len(keys)
        if not size:
            return
        frontier = [(keys[0], 0)]
        seen = set()  # a key can sit in the heap more than once
        while frontier:
            key, position = heappop(frontier)
            if key in levels and key not in seen:
                seen.add(key)
                yield key
            child = 2 * position + 1
            if child < size:
                heappush(frontier, (keys[child], child))
                if child + 1 < size:
                    heappush(frontier, (keys[child + 1], child + 1))


def _invalid_reason(order) -> str | None:
    """Why `order` can never be accepted, whatever the book holds; None if it can be."""
    if order.side not in SIDES:
        return "invalid_side"
    order_type = order.type
    if order_type not in TYPES:
        return "invalid_type"
    tif = order.tif
    if tif not in TIFS or (order_type == MARKET and tif == GTC):
        return "invalid_tif"
    if order.stp not in STP_MODES:
        return "invalid_stp"
    lots = order.lots
    if type(lots) is not int or lots <= 0:
        return "invalid_lots"
    price_ticks = order.price_ticks
    if order_type == LIMIT:
        if type(price_ticks) is not int or price_ticks <= 0:
            return "invalid_price"
    elif price_ticks is not None:
        return "invalid_price"
    post_only = order.post_only
    if post_only is not False and (post_only is not True or tif != GTC or order_type != LIMIT):
        return "invalid_post_only"
    return None


class OrderBook:
    """The book for one instrument. Not thread-safe: one caller at a time."""

    def __init__(self):
        self._bids = _Side(BUY)
        self._asks = _Side(SELL)
        self._resting = {}  # order id -> _Resting, for every live resting order
        self._known_ids = set()  # every id ever accepted or loaded

    # Commands

    def submit(self, order: Order) -> list[Event]:
        order_id = order.id
        if order_id in self._known_ids:
            return [Rejected(order_id, "duplicate_id")]
        reason = _invalid_reason(order)
        if reason is not None:
            return [Rejected(order_id, reason)]

        price_ticks = order.price_ticks
        if order.side == BUY:
            own, opposite, limit_key = self._bids, self._asks, price_ticks
        else:
            own, opposite = self._asks, self._bids
            limit_key = None if price_ticks is None else -price_ticks

        if order.post_only:
            best = opposite.best_key()
            if best is not None and best <= limit_key:
                return [Rejected(order_id, "post_only_would_take")]

        self._known_ids.add(order_id)
        lots = order.lots
        tif = order.tif
        events = [Accepted(order_id)]
        if tif == FOK:
            filled, _ = self._walk(opposite, order.org, order.stp, limit_key, lots)
            if filled < lots:
                events.append(Expired(order_id, lots))
                return events
        remaining = self._take(opposite, order_id, order.org, order.stp, limit_key, lots, events)
        if remaining:
            if tif == GTC:
                self._add(own, order_id, order.org, price_ticks, remaining)
            else:
                events.append(Expired(order_id, remaining))
        return events

    def cancel(self, order_id: Hashable) -> list[Event]:
        resting = self._resting.get(order_id)
        if resting is None:
            return [Rejected(order_id, "unknown_order")]
        lots = resting.lots
        self._unlink(resting)
        return [Cancelled(order_id, lots)]

    def reduce(self, order_id: Hashable, by_lots: int) -> list[Event]:
        if type(by_lots) is not int or by_lots <= 0:
            return [Rejected(order_id, "invalid_reduce")]
        resting = self._resting.get(order_id)
        if resting is None:
            return [Rejected(order_id, "unknown_order")]
        if by_lots >= resting.lots:
            self._unlink(resting)
            return [Reduced(order_id, 0)]
        resting.lots -= by_lots
        resting.level.lots -= by_lots
        return [Reduced(order_id, resting.lots)]

    def load_resting(self, order: Order) -> None:
        """Put a stored resting order back, without matching, behind those already loaded.

        Load a book's orders in the order they were first accepted (any order that keeps each
        price level's arrival order will do). Raises ValueError for an order that could not be
        resting: not a valid GTC limit order, a known id, or one that would cross the book.
        """
        if order.id in self._known_ids:
            raise ValueError(f"order {order.id!r}: duplicate id")
        reason = _invalid_reason(order)
        if reason is not None:
            raise ValueError(f"order {order.id!r}: {reason}")
        if order.type != LIMIT or order.tif != GTC:
            raise ValueError(f"order {order.id!r}: only GTC limit orders rest")
        price_ticks = order.price_ticks
        if order.side == BUY:
            own, opposite, limit_key = self._bids, self._asks, price_ticks
        else:
            own, opposite, limit_key = self._asks, self._bids, -price_ticks
        best = opposite.best_key()
        if best is not None and best <= limit_key:
            raise ValueError(f"order {order.id!r}: would cross the book")
        self._known_ids.add(order.id)
        self._add(own, order.id, order.org, price_ticks, order.lots)

    # Queries

    def preview(self, order: Order) -> Preview:
        """What submitting `order` now would trade, from a read-only walk; the book is unchanged."""
        reason = _invalid_reason(order)
        if reason is not None:
            return Preview(0, 0, reason)
        price_ticks = order.price_ticks
        if order.side == BUY:
            opposite, limit_key = self._asks, price_ticks
        else:
            opposite = self._bids
            limit_key = None if price_ticks is None else -price_ticks
        if order.post_only:
            best = opposite.best_key()
            if best is not None and best <= limit_key:
                return Preview(0, 0, "post_only_would_take")
            return Preview(0, 0)
        filled, notional = self._walk(opposite, order.org, order.stp, limit_key, order.lots)
        if order.tif == FOK and filled < order.lots:
            return Preview(0, 0)
        return Preview(filled, notional)

    def best_bid(self) -> int | None:
        key = self._bids.best_key()
        return None if key is None else -key

    def best_ask(self) -> int | None:
        return self._asks.best_key()

    def depth(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The best `levels` price levels per side as (price_ticks, total lots), best first."""
        bids = [(-key, self._bids.levels[key].lots) for key in nsmallest(levels, self._bids.levels)]
        asks = [(key, self._asks.levels[key].lots) for key in nsmallest(levels, self._asks.levels)]
        return bids, asks

    def resting(self, order_id: Hashable) -> int | None:
        """The lots `order_id` has resting, or None if it is not resting."""
        resting = self._resting.get(order_id)
        return None if resting is None else resting.lots

    def __len__(self) -> int:
        return len(self._resting)

    def __iter__(self) -> Iterator[RestingOrder]:
        """Resting orders in priority order: bids best first, then asks best first.

        Within a price, oldest first. The list is taken up front, so the book may change while
        the caller iterates.
        """
        snapshot = []
        for side in (self._bids, self._asks):
            for key in sorted(side.levels):
                for resting in side.levels[key].orders:
                    if resting.lots:
                        snapshot.append(
                            RestingOrder(
                                resting.id,
                                resting.org,
                                resting.side,
                                resting.price_ticks,
                                resting.lots,
                            )
                        )
        return iter(snapshot)

    # Internals

    def _take(self, opposite, taker_id, taker_org, stp, limit_key, lots, events) -> int:
        """Match `lots` against `opposite` up to `limit_key` (None: no limit); return what is left.

        Appends trades and STP expiries to `events`. Returns 0 once STP has expired the taker,
        having already emitted its `Expired`.
        """
        levels = opposite.levels
        keys = opposite.keys
        index = self._resting
        while lots:
            while keys and keys[0] not in levels:
                heappop(keys)
            if not keys:
                break
            key = keys[0]
            if limit_key is not None and key > limit_key:
                break
            level = levels[key]
            orders = level.orders
            while True:
                maker = orders[0]
                maker_lots = maker.lots
                if maker_lots == 0:
                    orders.popleft()
                    level.dead -= 1
                    continue
                if stp != STP_NONE and maker.org == taker_org:
                    if stp == EXPIRE_TAKER:
                        events.append(Expired(taker_id, lots))
                        return 0
                    orders.popleft()
                    del index[maker.id]
                    maker.lots = 0
                    level.lots -= maker_lots
                    events.append(Expired(maker.id, maker_lots))
                    if stp == EXPIRE_BOTH:
                        events.append(Expired(taker_id, lots))
                        lots = 0
                else:
                    if maker_lots <= lots:
                        fill = maker_lots
                        orders.popleft()
                        del index[maker.id]
                        maker.lots = 0
                    else:
                        fill = lots
                        maker.lots = maker_lots - fill
                    lots -= fill
                    level.lots -= fill
                    events.append(Trade(taker_id, maker.id, maker.price_ticks, fill))
                if level.lots == 0:
                    # This level is the heap's top: nothing was pushed since it was read.
                    del levels[key]
                    heappop(keys)
                    break
                if lots == 0:
                    break
        return lots

    @staticmethod
    def _walk(opposite, taker_org, stp, limit_key, lots) -> tuple[int, int]:
        """(lots, notional) that `_take` would fill, computed without changing anything."""
        filled = 0
        notional = 0
        levels = opposite.levels
        for key in opposite.ascending_keys():
            if limit_key is not None and key > limit_key:
                break
            for maker in levels[key].orders:
                maker_lots = maker.lots
                if maker_lots == 0:
                    continue
                if stp != STP_NONE and maker.org == taker_org:
                    if stp == EXPIRE_MAKER:
                        continue  # execution would expire this maker and go on
                    return filled, notional  # execution would expire the taker here
                fill = min(maker_lots, lots - filled)
                filled += fill
                notional += fill * maker.price_ticks
                if filled == lots:
                    return filled, notional
        return filled, notional

    def _add(self, side, order_id, org, price_ticks, lots) -> None:
        key = price_ticks if side.sign == 1 else -price_ticks
        levels = side.levels
        level = levels.get(key)
        if level is None:
            level = levels[key] = _Level(key)
            keys = side.keys
            heappush(keys, key)
            if len(keys) > 2 * len(levels) + _STALE_KEYS_SLACK:
                keys[:] = levels  # in place: `_take` may hold a reference to this list
                heapify(keys)
        resting = _Resting(order_id, org, side.name, price_ticks, lots, level)
        level.orders.append(resting)
        level.lots += lots
        self._resting[order_id] = resting

    def _unlink(self, resting) -> None:
        """Take a resting order out of the book, leaving a dead entry in its level's deque."""
        del self._resting[resting.id]
        level = resting.level
        level.lots -= resting.lots
        resting.lots = 0
        if level.lots == 0:
            side = self._bids if resting.side == BUY else self._asks
            del side.levels[level.key]
            return
        level.dead += 1
        if level.dead >= _DEAD_ENTRIES_BEFORE_COMPACTION and 2 * level.dead > len(level.orders):
            level.orders = deque(entry for entry in level.orders if entry.lots)
            level.dead = 0
