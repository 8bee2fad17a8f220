"""The matching engine on a real Celery worker process, and what a killed worker leaves behind."""

import random
from collections import defaultdict
from dataclasses import dataclass

import psycopg
import pytest
from django.db import connection
from django.db.models import Sum

from accounts.principal import Principal
from marketplace import engine
from marketplace import matching as core
from marketplace.matching import OrderBook
from marketplace.models import Order, Trade
from marketplace.services import order_place
from marketplace.tasks import market_match_task
from settlement.models import Entitlement, Hold, LedgerAccount, LedgerTransaction
from settlement.services import ledger_check
from tests import celery_worker as worker_fixtures
from tests.accounts.factories import MembershipFactory
from tests.celery_worker import wait_until
from tests.marketplace.factories import ProviderEndpointFactory

pytestmark = pytest.mark.django_db(transaction=True)

# The worker fixtures, in this module's scope for pytest (a conftest could import them instead).
celery_broker = worker_fixtures.celery_broker
celery_worker = worker_fixtures.celery_worker


def test_a_placed_order_is_matched_by_the_worker(celery_worker, market, seller, buyer, fund):
    fund(buyer.org.id, 100_000_000)
    ask = order_place(
        principal=seller, market_id=market.id, side="sell", price_micro=4_800_000, lots=10
    )
    bid = order_place(
        principal=buyer, market_id=market.id, side="buy", price_micro=5_000_000, lots=10
    )

    # Nothing ran inline: the orders wait for the worker, which the commit of each woke.
    wait_until(
        lambda: (
            Order.objects.filter(pk__in=[ask.pk, bid.pk], status=Order.Status.FILLED).count() == 2
        ),
        timeout=30,
    )
    trade = Trade.objects.get()
    assert (trade.taker_order_id, trade.maker_order_id) == (bid.pk, ask.pk)
    assert (trade.price_micro, trade.lots) == (4_800_000, 10)
    assert Entitlement.objects.get().trade_id == trade.pk
    assert ledger_check() == []
    assert "market_match_task" in celery_worker.output()


# --- A worker killed mid-batch ----------------------------------------------------------------
#
# Hundreds of crossing orders are placed (through order_place, with their holds) while nothing
# matches them; then a worker with a small batch size works through them. The test stops the
# worker inside a chosen batch's transaction: it holds, from a connection of its own, the row lock
# on the hold of a bid that trades in that batch. The engine locks holds in `trades_settle`, after
# it has written the batch's order states and trades and before the ledger moves and the
# entitlements, so the worker waits there with half a batch written and not committed, and is
# SIGKILLed in that state. A new worker then finishes the job. The result must be exactly what an
# uninterrupted run gives: the same command stream through the matching core, replayed here.

ORDERS = 300
BATCH_SIZE = 20  # 15 batches
BUYERS = SELLERS = 4
FUNDING_MICRO = 5_000_000_000  # $5,000 a buyer: more than its bids can hold
FINAL_OR_RESTING = {
    Order.Status.OPEN,
    Order.Status.FILLED,
    Order.Status.EXPIRED,
    Order.Status.REJECTED,
}


@pytest.fixture
def celery_worker_env():
    return {"MATCH_BATCH_SIZE": str(BATCH_SIZE)}


@dataclass
class Replay:
    """What an uninterrupted run does with the market's orders, from the matching core alone."""

    trades: list[tuple[int, int, int, int]]  # (taker id, maker id, price micro, lots), in order
    statuses: dict[int, str]
    filled_lots: dict[int, int]
    batches: list[list[int]]  # the order ids of each batch, in order


def _replay(market) -> Replay:
    book = OrderBook()
    rows = list(
        Order.objects.filter(market=market).order_by("id").values_list(*engine._PENDING_FIELDS)
    )
    trades, statuses, filled_lots = [], {}, defaultdict(int)
    for fields in rows:
        for event in book.submit(engine._core_order(fields, market, lots=fields[-1])):
            if isinstance(event, core.Trade):
                price_micro = event.price_ticks * market.tick_micro
                trades.append((event.taker, event.maker, price_micro, event.lots))
                filled_lots[event.taker] += event.lots
                filled_lots[event.maker] += event.lots
            elif isinstance(event, core.Expired):
                statuses[event.id] = Order.Status.EXPIRED
            elif isinstance(event, core.Rejected):
                statuses[event.id] = Order.Status.REJECTED
    for order_id, *_ in rows:
        resting = book.resting(order_id) is not None
        statuses.setdefault(order_id, Order.Status.OPEN if resting else Order.Status.FILLED)
    ids = [fields[0] for fields in rows]
    batches = [ids[i : i + BATCH_SIZE] for i in range(0, len(ids), BATCH_SIZE)]
    return Replay(trades, statuses, dict(filled_lots), batches)


@dataclass
class Book:
    market: object
    buyers: list
    funded_micro: int
    replay: Replay


@pytest.fixture
def crossing_book(celery_worker, market, fund, monkeypatch) -> Book:
    """ORDERS pending orders of BUYERS buyers and SELLERS sellers, about half of them crossing."""
    buyers = [
        Principal.for_membership(MembershipFactory(org__name=f"Buyer {i}")) for i in range(BUYERS)
    ]
    sellers = [
        Principal.for_membership(
            MembershipFactory(org__name=f"Seller {i}", org__is_buyer=False, org__is_provider=True)
        )
        for i in range(SELLERS)
    ]
    for seller in sellers:
        # Room for every ask a seller could post here: 1,000 lots over the delivery days.
        ProviderEndpointFactory(org=seller.org, market=market, capacity_tokens_per_day=100_000_000)
    for buyer in buyers:
        fund(buyer.org.id, FUNDING_MICRO)
    # Placed without waking the worker: the test decides when matching starts.
    monkeypatch.setattr(market_match_task, "delay_on_commit", lambda *args, **kwargs: None)
    rng = random.Random(20_260_512)
    for _ in range(ORDERS):
        side = rng.choice([Order.Side.BUY, Order.Side.SELL])
        order_place(
            principal=rng.choice(buyers if side == Order.Side.BUY else sellers),
            market_id=market.id,
            side=side,
            price_micro=rng.randint(495, 505) * market.tick_micro,  # $4.95 to $5.05
            lots=rng.randint(2, 12),
            tif="IOC" if rng.random() < 0.1 else "GTC",
        )
    monkeypatch.undo()
    assert Order.objects.filter(status=Order.Status.PENDING).count() == ORDERS
    return Book(market, buyers, BUYERS * FUNDING_MICRO, _replay(market))


class HoldGate:
    """A row lock on one bid's hold, held from a connection of the test's own.

    The worker that reaches that hold in `trades_settle` waits for it inside its open batch.
    """

    def __init__(self):
        db = connection.settings_dict
        self.connection = psycopg.connect(
            dbname=db["NAME"],
            user=db["USER"] or None,
            password=db["PASSWORD"] or None,
            host=db["HOST"] or None,
            port=db["PORT"] or None,
        )
        self.pid = self.connection.info.backend_pid

    def hold(self, order_id: int) -> None:
        hold_id = Hold.objects.get(reference=f"order:{order_id}").id
        with self.connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '20s'")
            cursor.execute(
                f"SELECT id FROM {Hold._meta.db_table} WHERE id = %s FOR UPDATE", [hold_id]
            )

    def release(self) -> None:
        self.connection.rollback()

    def blocked_backend(self) -> int | None:
        """The backend waiting on this gate, if any: the worker's, inside its batch."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                [self.pid],
            )
            row = cursor.fetchone()
        return row[0] if row else None


@pytest.fixture
def hold_gate(transactional_db):
    gate = HoldGate()
    yield gate
    gate.connection.close()  # before the database is flushed: the flush would wait on it


def _bid_that_trades_in(replay: Replay, batch: int) -> int:
    """A bid of `batch` (1-based) that trades as it arrives, so the engine locks its hold then."""
    ids = set(replay.batches[batch - 1])
    bids = set(Order.objects.filter(pk__in=ids, side=Order.Side.BUY).values_list("pk", flat=True))
    takers = [taker for taker, *_ in replay.trades if taker in bids]
    assert takers, f"no bid trades in batch {batch}: change the seed"
    return takers[0]


def _written_uncommitted(pid: int) -> set[str]:
    """The tables the backend `pid` has written in its open transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = %s AND l.mode = 'RowExclusiveLock' AND l.granted AND c.relkind = 'r'",
            [pid],
        )
        return {name for (name,) in cursor.fetchall()}


def _backend_gone(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone() is None


def _kill_inside_batch(worker, gate: HoldGate, book: Book, batch: int) -> None:
    """Run the worker until it is inside `batch` with its trades written, and SIGKILL it there."""
    gate.hold(_bid_that_trades_in(book.replay, batch))
    market_match_task.delay(book.market.id)
    pid = wait_until(gate.blocked_backend, timeout=30)
    written = _written_uncommitted(pid)
    assert {Order._meta.db_table, Trade._meta.db_table} <= written, (
        f"the kill should land after the batch wrote its orders and trades, not {written}"
    )
    worker.kill()
    gate.release()
    # The dead worker's backend gets the lock, finds its client gone and rolls back.
    wait_until(lambda: _backend_gone(pid), timeout=20)
    _assert_committed_batches(book, batch - 1)


def _assert_committed_batches(book: Book, batches: int) -> None:
    """Exactly the first `batches` batches are in the database, and nothing of the next."""
    done = [order_id for ids in book.replay.batches[:batches] for order_id in ids]
    book.market.refresh_from_db()
    assert book.market.last_sequence == len(done)
    assert set(Order.objects.exclude(status=Order.Status.PENDING).values_list("pk", flat=True)) == (
        set(done)
    )
    done_set = set(done)
    expected = [trade for trade in book.replay.trades if trade[0] in done_set]
    assert _trades() == expected
    assert Entitlement.objects.count() == len(expected)
    assert ledger_check() == []


def _trades() -> list[tuple[int, int, int, int]]:
    return list(
        Trade.objects.order_by("id").values_list(
            "taker_order_id", "maker_order_id", "price_micro", "lots"
        )
    )


def _finish(worker, book: Book) -> None:
    """Start a new worker and wake it, as the next order placed in the market would."""
    # The killed run's message is gone (the filesystem transport takes a message off the queue
    # when it delivers it), so the new worker needs the next match task to look at the market.
    worker.start()
    market_match_task.delay(book.market.id)
    wait_until(lambda: not Order.objects.filter(status=Order.Status.PENDING).exists(), timeout=60)


def _assert_matched_exactly_once(book: Book) -> None:
    market, replay = book.market, book.replay
    orders = {
        order_id: (status, filled_lots, sequence)
        for order_id, status, filled_lots, sequence in Order.objects.filter(
            market=market
        ).values_list("pk", "status", "filled_lots", "sequence")
    }
    # Every order was taken once, in id order, and ended in a final or resting state.
    ids = sorted(orders)
    assert [orders[order_id][2] for order_id in ids] == list(range(1, ORDERS + 1))
    assert {status for status, _, _ in orders.values()} <= FINAL_OR_RESTING
    assert {order_id: status for order_id, (status, _, _) in orders.items()} == replay.statuses
    assert {
        order_id: filled for order_id, (_, filled, _) in orders.items() if filled
    } == replay.filled_lots

    # The trades are those of an uninterrupted run, each written once.
    trades = _trades()
    assert trades == replay.trades
    assert len(set((taker, maker) for taker, maker, _, _ in trades)) == len(trades)
    traded_lots = sum(lots for *_, lots in trades)
    for side in (Order.Side.BUY, Order.Side.SELL):
        filled = Order.objects.filter(market=market, side=side).aggregate(n=Sum("filled_lots"))
        assert filled["n"] == traded_lots

    # One entitlement, one trade transaction per trade.
    trade_ids = set(Trade.objects.values_list("pk", flat=True))
    entitled = list(Entitlement.objects.values_list("trade_id", flat=True))
    assert sorted(entitled) == sorted(trade_ids)
    trade_keys = LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.TRADE)
    assert sorted(trade_keys.values_list("reference", flat=True)) == sorted(
        f"trade:{trade_id}" for trade_id in trade_ids
    )

    # Held is the open bids' holds, escrow the open entitlements, and no money was made or lost.
    assert ledger_check() == []
    accounts = LedgerAccount.objects.all()
    assert accounts.aggregate(n=Sum("balance_micro"))["n"] == 0
    clearing = accounts.get(org=None, kind=LedgerAccount.Kind.STRIPE_CLEARING)
    assert clearing.balance_micro == -book.funded_micro
    in_orgs = accounts.filter(org__isnull=False).aggregate(n=Sum("balance_micro"))["n"]
    fees = accounts.get(org=None, kind=LedgerAccount.Kind.FEES).balance_micro
    assert in_orgs + fees == book.funded_micro
    assert fees == Trade.objects.aggregate(n=Sum("buyer_fee_micro"))["n"]
    escrow = accounts.filter(kind=LedgerAccount.Kind.ESCROW).aggregate(n=Sum("balance_micro"))
    assert escrow["n"] == Trade.objects.aggregate(n=Sum("notional_micro"))["n"]
    open_bids = Order.objects.filter(market=market, side=Order.Side.BUY, status=Order.Status.OPEN)
    open_holds = Hold.objects.filter(
        reference__in=[f"order:{pk}" for pk in open_bids.values_list("pk", flat=True)],
        status=Hold.Status.OPEN,
    )
    assert open_holds.count() == open_bids.count()
    assert not Hold.objects.filter(status=Hold.Status.OPEN).exclude(pk__in=open_holds).exists()


def test_workers_killed_mid_batch_lose_nothing_and_double_nothing(
    celery_worker, crossing_book, hold_gate
):
    assert len(crossing_book.replay.batches) == ORDERS // BATCH_SIZE
    # Killed inside the first batch: nothing is committed, every order is still pending.
    _kill_inside_batch(celery_worker, hold_gate, crossing_book, batch=1)
    assert Order.objects.filter(status=Order.Status.PENDING).count() == ORDERS
    # Killed inside batch 6 with five batches committed, then inside batch 11 after a new worker
    # rebuilt the book from the database and committed five more.
    celery_worker.start()
    _kill_inside_batch(celery_worker, hold_gate, crossing_book, batch=6)
    celery_worker.start()
    _kill_inside_batch(celery_worker, hold_gate, crossing_book, batch=11)
    _finish(celery_worker, crossing_book)
    _assert_matched_exactly_once(crossing_book)
