"""A settlement run over 1,000,000 usage records, beside a plain SQL GROUP BY over the same rows.

A scratch database gets one market, `--pairs` buyer-provider pairs each holding one entitlement
bought through the real engine, and `--records` primary usage records (with their draws) spread
over those pairs inside one hour, written by set-based SQL (generate_series). The figure is the
time `settlement_run` takes to settle that hour (reconcile, deliver, write statements, run
ledger_check), as a multiple of a plain `GROUP BY buyer, provider, market, hour` sum over the
same rows, timed in the same run (the best of three, warm). Target: at most 5x.

    python -m benchmarks.settlement_run [--records 1000000] [--pairs 500]
"""

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.reference import django_setup, scratch_database

TARGET_RATIO = 5.0
TOKENS_PER_RECORD = 1_000
PRICE_MICRO = 5_000_000


def _prepare(pairs: int, records: int, hour: datetime) -> list[int]:
    """The pairs, their entitlements (through the engine), and the usage rows; the market id."""
    from django.db import connection, transaction

    from accounts.models import Membership, Org, Role, User
    from accounts.principal import Principal
    from marketplace import engine
    from marketplace.models import Market, ModelTier, ProviderEndpoint, Region
    from marketplace.services import order_place
    from settlement.models import Entitlement, LedgerAccount, LedgerTransaction
    from settlement.services import ledger_post, org_account, platform_account, transfer

    tier = ModelTier.objects.create(
        name="Bench tier",
        slug="bench",
        min_context_tokens=128_000,
        min_output_tokens_per_s=50,
        max_ttft_ms=1_500,
        max_output_tokens=16_384,
        admitted_models=["model-a"],
    )
    region = Region.objects.create(code="bn", name="Bench region")
    market = Market.objects.create(
        tier=tier,
        region=region,
        symbol="BENCH-BN",
        lot_tokens=1_000_000,
        tick_micro=10_000,
        min_lots=1,
        max_lots=10_000,
        reference_price_micro=PRICE_MICRO,
        band_bp=2_000,
        output_weight_bp=60_000,
        cache_weight_bp=1_000,
        maker_fee_bp=10,
        taker_fee_bp=25,
        delivery_days=30,
    )
    per_pair = -(-records // pairs) * TOKENS_PER_RECORD
    lots = -(-per_pair // 1_000_000) + 1
    clearing = platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING)

    def principal(name: str, *, is_provider: bool) -> Principal:
        org = Org.objects.create(
            name=name, slug=name, is_buyer=not is_provider, is_provider=is_provider
        )
        # No password: nothing here logs in, and hashing one cost most of the setup's time.
        user = User.objects.create_user(email=f"{name}@bench.test")
        return Principal.for_membership(
            Membership.objects.create(user=user, org=org, role=Role.OWNER)
        )

    principals = []
    for i in range(pairs):
        buyer = principal(f"buyer-{i}", is_provider=False)
        seller = principal(f"provider-{i}", is_provider=True)
        principals.append((buyer, seller))
        ProviderEndpoint.objects.create(
            org=seller.org,
            market=market,
            base_url=f"https://provider{i}.bench.test/v1",
            capacity_tokens_per_day=10**9,
            status=ProviderEndpoint.Status.VERIFIED,
            verified_at=hour,
            models=["model-a"],
        )
        with transaction.atomic():
            ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(
                    clearing,
                    org_account(org_id=buyer.org.id, kind=LedgerAccount.Kind.AVAILABLE),
                    2 * lots * PRICE_MICRO,
                ),
                reference="bench funding",
            )
    # All asks, then all bids of the same size at the same price: price-time priority matches
    # bid i with ask i, so each pair gets one entitlement, in one engine pass.
    for _, seller in principals:
        order_place(
            principal=seller, market_id=market.id, side="sell", price_micro=PRICE_MICRO, lots=lots
        )
    for buyer, _ in principals:
        order_place(
            principal=buyer, market_id=market.id, side="buy", price_micro=PRICE_MICRO, lots=lots
        )
    engine.market_match(market_id=market.id)
    entitlements = list(Entitlement.objects.order_by("id").values_list("id", flat=True))
    assert len(entitlements) == pairs, f"{len(entitlements)} entitlements for {pairs} pairs"

    # The usage: record n belongs to entitlement n mod pairs, ends inside the hour, is the
    # provider's report (primary, metered) and drew TOKENS_PER_RECORD from its entitlement.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE TEMP TABLE bench_entitlement AS
            SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, buyer_org_id, provider_org_id,
                   market_id
              FROM settlement_entitlement
            """
        )
        cursor.execute(
            """
            INSERT INTO settlement_usagerecord (
                source, source_org_id, request_id, batch_id, market_id, buyer_org_id,
                provider_org_id, model, input_tokens, cached_input_tokens, output_tokens,
                billable_tokens, output_weight_bp, cache_weight_bp, is_estimated, is_primary,
                started_at, ended_at, received_at, metered_at, entitlement_tokens, payg_tokens,
                payg_price_micro, payg_cost_micro, payg_fee_micro, unfunded_tokens,
                unfunded_micro)
            SELECT 'provider', e.provider_org_id, 'bench-' || g, gen_random_uuid(), e.market_id,
                   e.buyer_org_id, e.provider_org_id, 'model-a', %(tokens)s, 0, 0, %(tokens)s,
                   60000, 1000, false, true,
                   %(hour)s + (g %% 3600) * interval '1 second',
                   %(hour)s + (g %% 3600) * interval '1 second',
                   %(hour)s, %(hour)s, %(tokens)s, 0, 0, 0, 0, 0, 0
              FROM generate_series(0, %(records)s - 1) AS g
              JOIN bench_entitlement AS e ON e.n = g %% %(pairs)s
            """,
            {"tokens": TOKENS_PER_RECORD, "hour": hour, "records": records, "pairs": pairs},
        )
        cursor.execute(
            """
            INSERT INTO settlement_usagedraw (usage_record_id, entitlement_id, tokens,
                                              covered_tokens, hour, created_at)
            SELECT r.id, e.id, r.billable_tokens, r.billable_tokens,
                   date_trunc('hour', r.ended_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                   r.received_at
              FROM settlement_usagerecord AS r
              JOIN bench_entitlement AS e ON e.buyer_org_id = r.buyer_org_id
                                        AND e.provider_org_id = r.provider_org_id
            """
        )
        cursor.execute(
            """
            UPDATE settlement_entitlement AS t SET tokens_used = d.tokens
              FROM (SELECT entitlement_id, sum(tokens) AS tokens FROM settlement_usagedraw
                     GROUP BY entitlement_id) AS d
             WHERE t.id = d.entitlement_id
            """
        )
        cursor.execute("DROP TABLE bench_entitlement")
        cursor.execute("ANALYZE")
    return market.id


GROUP_BY = """
    SELECT buyer_org_id, provider_org_id, market_id,
           date_trunc('hour', ended_at AT TIME ZONE 'UTC'), sum(billable_tokens)
      FROM settlement_usagerecord
     WHERE ended_at >= %s AND ended_at < %s
     GROUP BY 1, 2, 3, 4
"""


def _group_by_seconds(hour: datetime) -> float:
    from django.db import connection

    best = float("inf")
    for _ in range(3):
        with connection.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute(GROUP_BY, [hour, hour + timedelta(hours=1)])
            cursor.fetchall()
            best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=500)
    args = parser.parse_args()
    hour = (datetime.now(UTC) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)

    with scratch_database("tx_bench_settlement") as url:
        django_setup(url, migrate=True)
        started = time.perf_counter()
        _prepare(args.pairs, args.records, hour)
        prepared_s = time.perf_counter() - started
        from django.db import connections

        from settlement.models import Entitlement
        from settlement.services import ledger_check, settlement_run

        reference_before = _group_by_seconds(hour)
        started = time.perf_counter()
        run = settlement_run(period_start=hour, period_end=hour + timedelta(hours=1))
        run_s = time.perf_counter() - started
        reference_after = _group_by_seconds(hour)
        started = time.perf_counter()
        again = settlement_run(period_start=hour, period_end=hour + timedelta(hours=1))
        rerun_s = time.perf_counter() - started
        problems = ledger_check()
        charged = sum(Entitlement.objects.values_list("charged_micro", flat=True))
        connections.close_all()

    reference_s = min(reference_before, reference_after)
    ratio = run_s / reference_s if reference_s else float("inf")
    expected_micro = args.records * TOKENS_PER_RECORD * PRICE_MICRO // 1_000_000
    print("== settlement run vs a plain GROUP BY over the same usage records")
    print(f"   {'usage records':<40} {args.records:>12,}")
    print(f"   {'pairs (entitlements)':<40} {args.pairs:>12,}")
    print(f"   {'setup (engine + generate_series) s':<40} {prepared_s:>12.2f}")
    print(f"   {'GROUP BY sum, best of 3, s':<40} {reference_s:>12.3f}")
    print(f"   {'settlement run, s':<40} {run_s:>12.3f}")
    print(f"   {'re-run of the settled period, s':<40} {rerun_s:>12.3f}")
    print(f"   {'tokens settled':<40} {run.tokens_settled:>12,}")
    print(f"   {'delivered micro-USD':<40} {run.delivered_micro:>12,}")
    print(f"   {'re-run delivered (same run row)':<40} {again.pk == run.pk!s:>12}")
    print(f"   {'ledger_check problems':<40} {len(problems):>12}")
    assert run.tokens_settled == args.records * TOKENS_PER_RECORD, run.tokens_settled
    assert charged == expected_micro, (charged, expected_micro)
    assert not problems, problems[:5]
    verdict = "PASS" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"   {'ratio':<40} {ratio:11.2f}x   target <= {TARGET_RATIO}x   {verdict}")


if __name__ == "__main__":
    main()
