"""The matching engine: the single writer of each market's book, run as a Celery task.

`market_match` drains a market's pending orders, in id order, through the matching core and
writes what happened (order states, trades, ledger moves, entitlements) in batches, one database
transaction per batch. It holds the market's lock (core.locks.market_lock) for the batch, so
two workers never match the same market at once.

Crash safety: every batch is one transaction and orders leave `pending` in it, so a worker killed
anywhere loses nothing (the orders are still pending and the next run takes them) and doubles
nothing (a committed batch left no pending orders behind). The book is kept in memory between
runs; it is rebuilt from the open orders whenever the market's `last_sequence` or `book_version`
in the database differs from what this process last wrote, and dropped after any failure.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core import locks
from core.bulk import rows_insert, rows_update
from core.units import bp_floor, cost_floor_micro
from marketplace import matching as core
from marketplace.matching import OrderBook
from marketplace.models import Market, Order, Trade
from settlement.services.trades import TradeFills, trades_settle

logger = logging.getLogger(__name__)

# Order states as plain strings, not the choices enum: core.bulk sends a column of str as one
# array literal, and anything else through the driver's adaptation, element by element.
_OPEN, _FILLED = Order.Status.OPEN.value, Order.Status.FILLED.value
_EXPIRED, _REJECTED = Order.Status.EXPIRED.value, Order.Status.REJECTED.value
_BUY, _SELL = Order.Side.BUY.value, Order.Side.SELL.value

# What the engine reads of a pending order, in this order.
_PENDING_FIELDS = ("id", "org_id", "side", "type", "tif", "post_only", "stp", "price_micro", "lots")


@dataclass
class _CachedBook:
    """A market's book as this process last wrote it, and who owns each resting order.

    `resting` maps every resting order's id to [org id, filled lots]: what the engine needs to
    write a trade against it and its new fill, without reading it back.
    """

    book: OrderBook
    resting: dict[int, list[int]]
    last_sequence: int
    book_version: int


_BOOKS: dict[int, _CachedBook] = {}


def market_match(*, market_id: int, batch_size: int | None = None) -> int:
    """Match every pending order of the market; returns how many orders were processed.

    `batch_size` orders go in each transaction (default: the MATCH_BATCH_SIZE setting).
    """
    batch_size = batch_size or settings.MATCH_BATCH_SIZE
    processed = 0
    while True:
        try:
            count = _match_batch(market_id=market_id, batch_size=batch_size)
        except BaseException:
            # The transaction rolled back; the in-memory book may be ahead of the database.
            _BOOKS.pop(market_id, None)
            raise
        processed += count
        if count < batch_size:
            return processed


def _book_for(market: Market) -> _CachedBook:
    cached = _BOOKS.get(market.id)
    if (
        cached is not None
        and cached.last_sequence == market.last_sequence
        and cached.book_version == market.book_version
    ):
        return cached
    _BOOKS.pop(market.id, None)
    book = OrderBook()
    resting: dict[int, list[int]] = {}
    rows = (
        Order.objects.filter(market_id=market.id, status=Order.Status.OPEN)
        .order_by("sequence")
        .values_list(*_PENDING_FIELDS, "filled_lots")
    )
    for *fields, filled_lots in rows.iterator(chunk_size=5000):
        order_id, org_id, lots = fields[0], fields[1], fields[-1]
        book.load_resting(_core_order(fields, market, lots=lots - filled_lots))
        resting[order_id] = [org_id, filled_lots]
    logger.info("rebuilt the book of market %s from %s open orders", market.id, len(book))
    return _CachedBook(book, resting, market.last_sequence, market.book_version)


def _core_order(fields, market: Market, *, lots: int) -> core.Order:
    order_id, org_id, side, order_type, tif, post_only, stp, price_micro, _ = fields
    if order_type == Order.Type.MARKET and side == Order.Side.BUY:
        # Held at the band's upper edge (order_place), so it trades as a limit there and never
        # pays more than it held.
        order_type, price_ticks = core.LIMIT, market.band_high_micro // market.tick_micro
    elif order_type == Order.Type.MARKET:
        order_type, price_ticks = core.MARKET, None
    else:
        order_type, price_ticks = core.LIMIT, price_micro // market.tick_micro
    return core.Order(
        id=order_id,
        org=org_id,
        side=side,
        type=order_type,
        price_ticks=price_ticks,
        lots=lots,
        tif=tif,
        post_only=post_only,
        stp=stp,
    )


# Every statement of a batch reads or writes the batch's own rows by key (orders, holds, ledger
# transactions by id, reference or idempotency key), in tables whose pages are in the cache, and
# so do the foreign-key checks PostgreSQL runs at commit, one query per key written. At the
# default cost of a random page (4, priced for spinning disks) the planner prices a scan of a
# small table below a lookup in its index. Measured on the benchmark without this setting: the
# commits took 0.3 s more of the server's CPU over the run (the checks against the orgs, the
# market and the ledger accounts are the likely cause) and the pending reads 0.2 s more; the
# bulk updates no longer depend on it (core.bulk adds `= ANY` to them). 1.1 is the usual figure
# for data in memory or on SSD; it holds for this transaction only.
_BATCH_PLANNER_SQL = "SET LOCAL random_page_cost = 1.1"


@transaction.atomic(durable=True)
def _match_batch(*, market_id: int, batch_size: int) -> int:
    locks.market_lock(market_id)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_BATCH_PLANNER_SQL)
    market = Market.objects.get(pk=market_id)
    if market.status != Market.Status.OPEN:
        return 0  # a halted market keeps its book and its pending orders until it resumes
    pending = _pending_orders(market_id=market_id, batch_size=batch_size)
    if not pending:
        return 0
    cached = _book_for(market)
    batch = _Batch(market, cached)
    for fields in pending:
        batch.submit(fields)
    batch.write()
    Market.objects.filter(pk=market.id).update(last_sequence=batch.sequence)
    cached.last_sequence = batch.sequence
    _BOOKS[market.id] = cached
    return len(pending)


def _pending_orders(*, market_id: int, batch_size: int) -> list[tuple]:
    """The first `batch_size` pending orders of the market by id, as `_PENDING_FIELDS` tuples."""
    pending = Order.objects.filter(market_id=market_id, status=Order.Status.PENDING)
    if connection.vendor != "postgresql":
        return list(pending.order_by("id").values_list(*_PENDING_FIELDS)[:batch_size])
    with connection.cursor() as cursor:
        cursor.execute(_PENDING_SQL, [market_id, Order.Status.PENDING.value, batch_size])
        return cursor.fetchall()


# The ids first, from order_market_status_id alone (an index-only scan), then the rows by id.
# Asked for as one plain query, the planner may walk the primary key from the oldest order and
# filter out every order already processed: right after a burst of placements its statistics
# say nearly every order is pending, and then that path looks as cheap as the index.
_PENDING_SQL = (
    f"SELECT {', '.join(_PENDING_FIELDS)} FROM {Order._meta.db_table}"  # noqa: S608
    f" WHERE id = ANY(ARRAY(SELECT id FROM {Order._meta.db_table}"
    " WHERE market_id = %s AND status = %s ORDER BY id LIMIT %s)) ORDER BY id"
)


class _Batch:
    """One batch of submissions: run through the book, gathered in columns, written in bulk."""

    def __init__(self, market: Market, cached: _CachedBook):
        self.market = market
        self.book = cached.book
        self.resting = cached.resting
        self.sequence = market.last_sequence
        self.now = timezone.now()
        # The batch's own orders, in sequence order: id -> [sequence, side, lots, reject reason].
        self.taken: dict[int, list] = {}
        # Every order whose state changed: id -> [org id, side, filled lots].
        self.touched: dict[int, list] = {}
        self.expired: set[int] = set()
        self.trades: list[tuple] = []  # (taker id, maker id, price ticks, lots)

    def submit(self, fields) -> None:
        order_id, org_id, side, lots = fields[0], fields[1], fields[2], fields[-1]
        self.sequence += 1
        taken = self.taken[order_id] = [self.sequence, side, lots, ""]
        own = self.touched[order_id] = [org_id, side, 0]
        maker_side = _SELL if side == _BUY else _BUY
        trades = self.trades
        for event in self.book.submit(_core_order(fields, self.market, lots=lots)):
            kind = type(event)
            if kind is core.Trade:
                maker = self._maker(event.maker, maker_side)
                maker[2] += event.lots
                own[2] += event.lots
                trades.append((order_id, event.maker, event.price_ticks, event.lots))
            elif kind is core.Expired:
                self.expired.add(event.id)
                if event.id != order_id:
                    self._maker(event.id, maker_side)  # self-trade prevention expired a maker
            elif kind is core.Rejected:
                taken[3] = event.reason[:64]
        if self.book.resting(order_id) is not None:
            self.resting[order_id] = [org_id, own[2]]

    def _maker(self, order_id: int, side: str) -> list:
        touched = self.touched.get(order_id)
        if touched is None:
            org_id, filled_lots = self.resting[order_id]
            touched = self.touched[order_id] = [org_id, side, filled_lots]
        return touched

    def _status(self, order_id: int) -> str:
        taken = self.taken.get(order_id)
        if taken is not None and taken[3]:
            return _REJECTED
        if order_id in self.expired:
            return _EXPIRED
        if self.book.resting(order_id) is not None:
            return _OPEN
        return _FILLED

    def write(self) -> None:
        """Write the batch: order states, trades, then their settlement."""
        statuses = {order_id: self._status(order_id) for order_id in self.touched}
        for order_id, status in statuses.items():
            if status == _OPEN:
                self.resting[order_id][1] = self.touched[order_id][2]
            else:
                self.resting.pop(order_id, None)
        touched, taken = self.touched, self.taken
        taken_ids = list(taken)
        rows_update(
            Order,
            ids=taken_ids,
            columns={
                "status": [statuses[order_id] for order_id in taken_ids],
                "filled_lots": [touched[order_id][2] for order_id in taken_ids],
                "sequence": [taken[order_id][0] for order_id in taken_ids],
                "reject_reason": [taken[order_id][3] for order_id in taken_ids],
            },
            constants={"updated_at": self.now},
        )
        makers = [order_id for order_id in touched if order_id not in taken]
        rows_update(
            Order,
            ids=makers,
            columns={
                "status": [statuses[order_id] for order_id in makers],
                "filled_lots": [touched[order_id][2] for order_id in makers],
            },
            constants={"updated_at": self.now},
        )
        fills = self._write_trades()
        finished_buys = sorted(
            order_id
            for order_id, (_, side, _) in touched.items()
            if side == _BUY and statuses[order_id] != _OPEN
        )
        trades_settle(
            fills=fills,
            finished_hold_references=[f"order:{order_id}" for order_id in finished_buys],
        )

    def _trade_columns(self) -> tuple[dict[str, list], list[str]]:
        """The batch's trades as the columns of their rows, and each one's buy hold reference."""
        market = self.market
        tick_micro, lot_tokens = market.tick_micro, market.lot_tokens
        touched, taken = self.touched, self.taken
        taker_ids, maker_ids, buyer_orgs, seller_orgs = [], [], [], []
        prices, lots_column, tokens_column, notionals = [], [], [], []
        buyer_fees, seller_fee_bps, sequences, hold_references = [], [], [], []
        # Each side's fees once: the taker pays the taker fee, the maker the maker fee.
        fee_bps = {
            _BUY: (market.taker_fee_bp, market.maker_fee_bp),
            _SELL: (market.maker_fee_bp, market.taker_fee_bp),
        }
        for taker_id, maker_id, price_ticks, lots in self.trades:
            taker_org, taker_side, _ = touched[taker_id]
            maker_org = touched[maker_id][0]
            price_micro = price_ticks * tick_micro
            tokens = lots * lot_tokens
            notional_micro = cost_floor_micro(tokens=tokens, price_micro_per_m=price_micro)
            buyer_fee_bp, seller_fee_bp = fee_bps[taker_side]
            if taker_side == _BUY:
                buyer_orgs.append(taker_org)
                seller_orgs.append(maker_org)
                hold_references.append(f"order:{taker_id}")
            else:
                buyer_orgs.append(maker_org)
                seller_orgs.append(taker_org)
                hold_references.append(f"order:{maker_id}")
            taker_ids.append(taker_id)
            maker_ids.append(maker_id)
            prices.append(price_micro)
            lots_column.append(lots)
            tokens_column.append(tokens)
            notionals.append(notional_micro)
            buyer_fees.append(bp_floor(notional_micro, buyer_fee_bp))
            seller_fee_bps.append(seller_fee_bp)
            sequences.append(taken[taker_id][0])
        columns = {
            "taker_order_id": taker_ids,
            "maker_order_id": maker_ids,
            "buyer_org_id": buyer_orgs,
            "seller_org_id": seller_orgs,
            "price_micro": prices,
            "lots": lots_column,
            "tokens": tokens_column,
            "notional_micro": notionals,
            "buyer_fee_micro": buyer_fees,
            "seller_fee_bp": seller_fee_bps,
            "sequence": sequences,
        }
        return columns, hold_references

    def _write_trades(self) -> TradeFills:
        """Insert the batch's trades; returns them as columns for settlement."""
        market = self.market
        columns, hold_references = self._trade_columns()
        trade_ids = rows_insert(
            Trade,
            columns=columns,
            constants={"market_id": market.id, "created_at": self.now},
            returning_ids=True,
        )
        return TradeFills(
            market_id=market.id,
            output_weight_bp=market.output_weight_bp,
            cache_weight_bp=market.cache_weight_bp,
            expiry_policy=market.expiry_policy,
            expires_at=self.now + timedelta(days=market.delivery_days),
            trade_ids=trade_ids,
            buyer_org_ids=columns["buyer_org_id"],
            seller_org_ids=columns["seller_org_id"],
            buy_hold_references=hold_references,
            tokens=columns["tokens"],
            price_micro=columns["price_micro"],
            notional_micro=columns["notional_micro"],
            buyer_fee_micro=columns["buyer_fee_micro"],
            seller_fee_bp=columns["seller_fee_bp"],
        )
