"""Orders per second through the matching engine, end to end on PostgreSQL, beside pgbench.

`--orders` pending orders (bids and asks, limit prices a few ticks either side of the mid, so
most of them trade; a share IOC) wait in one market with their holds, placed the way
`order_place` leaves them: the order row `pending`, the bid's hold row and its ledger
transaction (available to held). The setup writes them in bulk and is not timed. Then
`market_match` drains the market, timed: it sequences every order, matches it, and writes the
order states, the trades, one entitlement per trade and the ledger moves (held to escrow and
fees, what is left of finished bids back to available) in its batched transactions. pgbench's
TPC-B (`-c 8 -j 2`, scale 10) runs on the same server before and after; the reference is their
mean. Target: at least 3x. `ledger_check` runs afterwards and must be clean. The CPU an order
cost is printed for the engine's process and for its database backend (when the server runs on
this machine): the two take turns, so together they bound the figure on a quiet machine.

    python -m benchmarks.engine [--orders 30000] [--buyers 40] [--sellers 10] [--seed 7]
                                [--batch-size N] [--seconds 20]
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.reference import (
    Pgbench,
    _backend_pid,
    _process_cpu_s,
    django_setup,
    print_result,
    scratch_database,
)

TARGET_RATIO = 3.0
FUNDING_MICRO = 10**12
SPREAD_TICKS = 6  # limit prices land this many ticks either side of the mid
IOC_SHARE = 0.1


def _market():
    from marketplace.models import Market, ModelTier, Region

    tier = ModelTier.objects.create(
        name="Bench",
        slug="bench",
        min_context_tokens=8_000,
        min_output_tokens_per_s=10,
        max_ttft_ms=1_000,
        max_output_tokens=4_096,
        admitted_models=["bench-model"],
    )
    region = Region.objects.create(code="bn", name="Bench")
    return Market.objects.create(
        tier=tier,
        region=region,
        symbol="BENCH-BN",
        lot_tokens=1_000_000,
        tick_micro=10_000,
        min_lots=1,
        max_lots=1_000,
        reference_price_micro=5_000_000,
        band_bp=2_000,
        output_weight_bp=60_000,
        cache_weight_bp=1_000,
        maker_fee_bp=10,
        taker_fee_bp=25,
        delivery_days=30,
    )


def _orgs(buyers: int, sellers: int) -> tuple[list[int], list[int]]:
    """Funded buyer orgs and provider orgs; returns their ids."""
    from django.db import transaction

    from accounts.models import Org
    from settlement.models import LedgerAccount, LedgerTransaction
    from settlement.services import ledger_post, org_account, platform_account, transfer

    clearing = platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING)
    buyer_ids = []
    for index in range(buyers):
        org = Org.objects.create(name=f"Bench buyer {index}", slug=f"bench-buyer-{index}")
        with transaction.atomic():
            ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(
                    clearing,
                    org_account(org_id=org.id, kind=LedgerAccount.Kind.AVAILABLE),
                    FUNDING_MICRO,
                ),
                reference="bench funding",
            )
        buyer_ids.append(org.id)
    seller_ids = [
        Org.objects.create(
            name=f"Bench provider {index}",
            slug=f"bench-provider-{index}",
            is_buyer=False,
            is_provider=True,
        ).id
        for index in range(sellers)
    ]
    return buyer_ids, seller_ids


def _pending_orders(market, buyer_ids, seller_ids, *, count: int, seed: int) -> None:
    """Insert `count` pending orders with their bids' holds, as order_place leaves them."""
    from django.db import transaction

    from marketplace.models import Order
    from settlement.models import Hold, LedgerAccount, LedgerTransaction
    from settlement.services.batch import TransactionSpec, ledger_post_batch, org_accounts_bulk
    from settlement.services.ledger import Posting

    Kind = LedgerAccount.Kind
    rng = random.Random(seed)
    mid_ticks = market.reference_price_micro // market.tick_micro
    orders = []
    for _ in range(count):
        is_bid = rng.random() < 0.5
        org_id = rng.choice(buyer_ids if is_bid else seller_ids)
        price_micro = (mid_ticks + rng.randint(-SPREAD_TICKS, SPREAD_TICKS)) * market.tick_micro
        lots = rng.randint(1, 10)
        orders.append(
            Order(
                org_id=org_id,
                market_id=market.id,
                side=Order.Side.BUY if is_bid else Order.Side.SELL,
                type=Order.Type.LIMIT,
                tif=Order.TimeInForce.IOC if rng.random() < IOC_SHARE else Order.TimeInForce.GTC,
                price_micro=price_micro,
                lots=lots,
                hold_micro=(
                    market.bid_hold_micro(lots=lots, price_micro=price_micro) if is_bid else 0
                ),
            )
        )
    with transaction.atomic():
        Order.objects.bulk_create(orders, batch_size=5_000)
        bids = [order for order in orders if order.hold_micro]
        accounts = org_accounts_bulk(org_ids=buyer_ids, kinds=[Kind.AVAILABLE, Kind.HELD])
        ledger_post_batch(
            [
                TransactionSpec(
                    kind=LedgerTransaction.Kind.HOLD,
                    reference=order.hold_reference,
                    idempotency_key=f"hold:{order.hold_reference}",
                    postings=[
                        Posting(accounts[(order.org_id, Kind.AVAILABLE)].id, -order.hold_micro),
                        Posting(accounts[(order.org_id, Kind.HELD)].id, order.hold_micro),
                    ],
                )
                for order in bids
            ]
        )
        Hold.objects.bulk_create(
            [
                Hold(
                    org_id=order.org_id,
                    reference=order.hold_reference,
                    amount_micro=order.hold_micro,
                )
                for order in bids
            ],
            batch_size=5_000,
        )


def _outcome(market_id: int) -> dict:
    from django.db.models import Count, Sum

    from marketplace.models import Order, Trade
    from settlement.models import Entitlement, LedgerEntry, LedgerTransaction

    statuses = dict(
        Order.objects.filter(market_id=market_id)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return {
        "statuses": statuses,
        "trades": Trade.objects.filter(market_id=market_id).count(),
        "lots": Trade.objects.filter(market_id=market_id).aggregate(n=Sum("lots"))["n"] or 0,
        "entitlements": Entitlement.objects.filter(market_id=market_id).count(),
        "ledger_transactions": LedgerTransaction.objects.filter(
            kind__in=[LedgerTransaction.Kind.TRADE, LedgerTransaction.Kind.HOLD_RELEASE]
        ).count(),
        "ledger_entries": LedgerEntry.objects.count(),
    }


def _cpu_per_order(client_cpu_s: float, server_cpu_s: float | None, orders: int) -> str:
    """The CPU an order cost as "client / database" microseconds (n/a: a server elsewhere)."""
    if not orders:
        return "n/a"
    server = "n/a" if server_cpu_s is None else f"{1e6 * server_cpu_s / orders:,.0f}"
    return f"{1e6 * client_cpu_s / orders:,.0f} / {server} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=30_000, help="pending orders to match")
    parser.add_argument("--buyers", type=int, default=40, help="funded buyer orgs")
    parser.add_argument("--sellers", type=int, default=10, help="provider orgs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=None, help="orders per transaction")
    parser.add_argument("--seconds", type=int, default=20, help="length of each pgbench run")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the match")
    args = parser.parse_args()

    # A pgbench database of its own name: another benchmark started on the same server meanwhile
    # must not drop it mid-run (the figures would still move, but the run would not fail).
    with (
        scratch_database("tx_bench_engine_pgbench") as pgbench_url,
        scratch_database("tx_bench_engine") as url,
    ):
        pgbench = Pgbench(pgbench_url)
        pgbench.initialise(scale=10)
        django_setup(url, migrate=True)
        from django.conf import settings
        from django.db import connection

        from marketplace.engine import market_match
        from settlement.services import ledger_check

        market = _market()
        buyer_ids, seller_ids = _orgs(args.buyers, args.sellers)
        _pending_orders(market, buyer_ids, seller_ids, count=args.orders, seed=args.seed)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # the setup's bulk load, as autovacuum would
        batch_size = args.batch_size or settings.MATCH_BATCH_SIZE

        backend_pid = _backend_pid()
        before = pgbench.tps(clients=8, jobs=2, seconds=args.seconds)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        server_cpu_before = _process_cpu_s(backend_pid) if backend_pid else None
        client_cpu_before = time.process_time()
        started = time.perf_counter()
        processed = market_match(market_id=market.id, batch_size=batch_size)
        elapsed = time.perf_counter() - started
        client_cpu_s = time.process_time() - client_cpu_before
        server_cpu_s = _process_cpu_s(backend_pid) - server_cpu_before if backend_pid else None
        if profiler is not None:
            profiler.disable()
        after = pgbench.tps(clients=8, jobs=2, seconds=args.seconds)

        outcome = _outcome(market.id)
        problems = ledger_check()
        connection.close()

    if profiler is not None:
        import pstats

        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    statuses = outcome["statuses"]
    print_result(
        name="matching engine (market_match: sequence, match, trades, entitlements, ledger)",
        figure=processed / elapsed,
        unit="orders/s, one market, one worker",
        target=TARGET_RATIO,
        reference=statistics.fmean([before, after]),
        reference_label="pgbench TPC-B TPS, -c 8 -j 2",
        details=(
            ("pgbench before / after", f"{before:,.0f} / {after:,.0f}"),
            ("orders matched / seconds", f"{processed:,} / {elapsed:.2f}"),
            ("orders per batch", f"{batch_size:,}"),
            (
                "CPU per order, client / database",
                _cpu_per_order(client_cpu_s, server_cpu_s, processed),
            ),
            (
                "filled / open / expired / pending",
                "{} / {} / {} / {}".format(
                    *(statuses.get(s, 0) for s in ("filled", "open", "expired", "pending"))
                ),
            ),
            ("trades / entitlements", f"{outcome['trades']:,} / {outcome['entitlements']:,}"),
            ("lots traded", f"{outcome['lots']:,}"),
            ("trade + release ledger transactions", f"{outcome['ledger_transactions']:,}"),
            ("ledger_check after the run", f"{len(problems)} BREACHES" if problems else "clean"),
        ),
    )
    for problem in problems:
        print(f"   BREACH: {problem}")


if __name__ == "__main__":
    main()
