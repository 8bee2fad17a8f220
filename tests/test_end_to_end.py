"""The whole money path once, on PostgreSQL with a real Celery worker, localstripe and webhooks.

A buyer tops up $50.00 with a card through localstripe (its signed webhook reaches the live
server; the worker credits it). A provider whose endpoint staff verified posts an ask of 4 lots
at $4.80, the buyer bids 4 lots at $5.00 through order_place, and the worker matches them at the
maker's price: $19.20 into escrow, the buyer's 25 bp fee ($0.048) to the platform. Both sides
report usage for two hours: 1,000,000 billable tokens in the first, the buyer's figure 1 % lower
(within the 2 % tolerance); 1,500,000 in the second, the buyer's 1,200,000 (outside it). The
run for the first hour pays it; the run for the second holds it; staff resolve the discrepancy
at 1,400,000 tokens and the next run pays those. The provider connects a payout account and is
paid out everything earned in whole cents, confirmed by Stripe's transfer event.

Figures (market: $5.00 list, lots of 1M tokens, maker fee 10 bp on delivery, taker fee 25 bp):
    delivered  floor(2,400,000 x 4.80) = 11,520,000 micro-USD (4,800,000 + 6,720,000)
    provider fee at delivery   11,520 (10 bp, cumulative)      earned 11,508,480
    payout     11,500,000 (whole cents)                        earned left 8,480
    platform fees              48,000 + 11,520 = 59,520
    buyer      available 30,752,000 + escrow 7,680,000 = 50,000,000 - 11,520,000 - 48,000
"""

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
from django.db.models import Sum
from django.utils import timezone

from marketplace.models import Order, Trade
from marketplace.services import endpoint_register, endpoint_verify, order_place
from settlement import stripe_gateway
from settlement.models import (
    Discrepancy,
    Entitlement,
    LedgerAccount,
    LedgerEntry,
    Payout,
    PayoutAccount,
    SettlementRun,
    StatementLine,
    StripeEvent,
    TopUp,
)
from settlement.selectors import account_balance, statement_rows
from settlement.services import (
    UsageInput,
    discrepancy_resolve,
    ledger_check,
    payout_account_connect,
    payout_request,
    payout_send,
    settlement_run,
    usage_ingest,
)
from settlement.tasks import payout_send_task
from tests import celery_worker as worker_fixtures
from tests.celery_worker import wait_until
from tests.marketplace.factories import MarketFactory
from tests.settlement import connect_events as ce
from tests.settlement import stripe_events as se

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.localstripe,
    pytest.mark.django_db(transaction=True),
]

# The worker fixtures, in this module's scope for pytest.
celery_broker = worker_fixtures.celery_broker
celery_worker = worker_fixtures.celery_worker
celery_worker_env = worker_fixtures.celery_worker_env

Kind = LedgerAccount.Kind
HOUR = timedelta(hours=1)
TOPUP_MICRO = 50_000_000
ASK_MICRO, BID_MICRO, LOTS = 4_800_000, 5_000_000, 4
NOTIONAL_MICRO = 19_200_000  # 4 lots of 1M tokens at $4.80
BUYER_FEE_MICRO = 48_000  # 25 bp of the notional
HOUR_A_TOKENS = 1_000_000  # the buyer reports 990,000: 1 % lower, within 2 %
HOUR_B_TOKENS, HOUR_B_BUYER_TOKENS, HOUR_B_RESOLVED = 1_500_000, 1_200_000, 1_400_000
DELIVERED_MICRO = 11_520_000  # floor(2,400,000 tokens x $4.80 / 1M)
PROVIDER_FEE_MICRO = 11_520  # 10 bp of what was delivered
PAYOUT_MICRO = 11_500_000  # earned, 11,508,480, in whole cents
ORG_KINDS = (Kind.AVAILABLE, Kind.HELD, Kind.ESCROW, Kind.EARNED, Kind.PAYOUT_PENDING)


class FakeConnect:
    """The gateway's Connect calls, answering as Stripe would.

    localstripe has no Connect (no accounts, no transfers), so these calls are faked at the
    gateway edge, the one module that talks to Stripe: every line of ours around them (the
    claim, the idempotency key, the ledger moves) still runs, and Stripe's later word arrives
    as hand-signed events through the real webhook endpoint.
    """

    def __init__(self):
        self.transfers: list[dict] = []

    def connected_account_create(self, **call) -> stripe_gateway.ConnectedAccountResult:
        return stripe_gateway.ConnectedAccountResult(id="acct_e2e_1")

    def account_link_create(self, **call) -> stripe_gateway.AccountLinkResult:
        return stripe_gateway.AccountLinkResult(url="https://connect.stripe.test/e2e", expires_at=0)

    def transfer_create(self, **call) -> stripe_gateway.TransferResult:
        self.transfers.append(call)
        return stripe_gateway.TransferResult(
            id="tr_e2e_1", amount_cents=call["amount_cents"], destination=call["destination"]
        )


@dataclass
class Checkpoint:
    """A moment between two steps, with every org account's balance then."""

    name: str
    at: datetime
    balances: dict[tuple[int, str], int]


def _checkpoint(name: str) -> Checkpoint:
    balances = {
        (org_id, kind): balance
        for org_id, kind, balance in LedgerAccount.objects.filter(org__isnull=False).values_list(
            "org_id", "kind", "balance_micro"
        )
    }
    return Checkpoint(name=name, at=timezone.now(), balances=balances)


def _fees_by_kind() -> dict[str, int]:
    """The platform's fees account, credited by kind of ledger transaction."""
    rows = (
        LedgerEntry.objects.filter(account__org__isnull=True, account__kind=Kind.FEES)
        .values_list("transaction__kind")
        .annotate(total=Sum("amount_micro"))
        .order_by()
    )
    return dict(rows)


def _send_signed(live_server, secret: str, event: dict) -> None:
    """Post `event` to the real webhook endpoint, signed as Stripe signs it."""
    body = se.body_of(event)
    response = httpx.post(
        f"{live_server.url}/stripe/webhook/",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": se.signature_header(body, secret),
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text


def _processed(stripe_id: str) -> bool:
    event = StripeEvent.objects.filter(stripe_id=stripe_id).first()
    return event is not None and event.status == StripeEvent.Status.PROCESSED


def _records(market, counterparty, *, prefix: str, hour: datetime, figures: list[int]):
    """One record per figure of billable tokens (input only), ending in `hour`, 10 min apart."""
    return [
        UsageInput(
            request_id=f"{prefix}-{i}",
            market=market.symbol,
            counterparty=counterparty.slug,
            model="model-a",
            input_tokens=tokens,
            cached_input_tokens=0,
            output_tokens=0,
            started_at=hour + timedelta(minutes=10 * (i + 1), seconds=-2),
            ended_at=hour + timedelta(minutes=10 * (i + 1)),
        )
        for i, tokens in enumerate(figures)
    ]


def _ingest(principal, records) -> None:
    results = usage_ingest(principal=principal, records=records)
    assert [r.status for r in results] == ["accepted"] * len(records), [
        (r.code, r.message) for r in results
    ]


def _assert_statements_add_up(
    checkpoints: list[Checkpoint], org_ids: set[int], movements: dict[str, dict]
) -> None:
    """Between each two checkpoints, every org account's statement is the change of its balance.

    opening + credits - debits = closing, the movements by kind sum to the same change and are
    those of `movements` (by the later checkpoint's name), and each statement opens where the
    one before closed: no entry is counted twice or lost between them.
    """
    for before, after in itertools.pairwise(checkpoints):
        rows = statement_rows(period_start=before.at, period_end=after.at)
        moved = {
            (row.org_id, row.account_kind): {kind: n for kind, n in row.movements.items() if n}
            for row in rows
        }
        assert {key: kinds for key, kinds in moved.items() if kinds} == movements[after.name]
        seen = set()
        for row in rows:
            key = (row.org_id, row.account_kind)
            seen.add(key)
            change = row.credits_micro - row.debits_micro
            assert row.opening_micro == before.balances.get(key, 0), (after.name, key)
            assert row.closing_micro == row.opening_micro + change == after.balances[key], (
                after.name,
                key,
            )
            assert sum(row.movements.values()) == change, (after.name, key, row.movements)
        for key, balance in after.balances.items():
            if key[0] in org_ids and key not in seen:
                assert balance == before.balances.get(key, 0) == 0, (after.name, key)


def test_topup_trade_usage_settlement_and_payout_add_up(
    celery_worker, localstripe, live_server, buyer, provider, staff, api_for, monkeypatch
):
    started = timezone.now()
    this_hour = started.replace(minute=0, second=0, microsecond=0)
    hour_a, hour_b = this_hour - 2 * HOUR, this_hour - HOUR
    checkpoints = [_checkpoint("start")]
    market = MarketFactory()

    # 1. A card top-up through localstripe; only its signed webhook credits the buyer.
    client = api_for(buyer, scopes=["read", "trade"])
    response = client.post(
        "/api/v1/topups",
        {"amount": "50.00", "payment_method": "pm_card_visa"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="e2e-topup-1",
    )
    assert response.status_code == 201, response.json()
    topup_id = response.json()["id"]
    wait_until(lambda: TopUp.objects.get(pk=topup_id).status == TopUp.Status.SUCCEEDED, 30)
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == TOPUP_MICRO
    checkpoints.append(_checkpoint("top-up"))

    # 2. A verified endpoint backs the provider's ask; the worker matches the buyer's bid.
    endpoint = endpoint_register(
        principal=provider,
        market_id=market.id,
        base_url="https://provider.e2e.test/v1",
        models=["model-a"],
        capacity_tokens_per_day=5_000_000,
    )
    endpoint_verify(actor=staff, endpoint_id=endpoint.id)
    ask = order_place(
        principal=provider, market_id=market.id, side="sell", price_micro=ASK_MICRO, lots=LOTS
    )
    wait_until(lambda: Order.objects.get(pk=ask.pk).status == Order.Status.OPEN, 30)
    bid = order_place(
        principal=buyer, market_id=market.id, side="buy", price_micro=BID_MICRO, lots=LOTS
    )
    wait_until(
        lambda: (
            Order.objects.filter(pk__in=[ask.pk, bid.pk], status=Order.Status.FILLED).count() == 2
        ),
        30,
    )
    trade = Trade.objects.get()
    assert (trade.taker_order_id, trade.maker_order_id) == (bid.pk, ask.pk)
    assert (trade.price_micro, trade.lots, trade.notional_micro, trade.buyer_fee_micro) == (
        ASK_MICRO,
        LOTS,
        NOTIONAL_MICRO,
        BUYER_FEE_MICRO,
    )
    entitlement = wait_until(lambda: Entitlement.objects.filter(trade=trade).first(), 10)
    assert entitlement.tokens_bought == LOTS * market.lot_tokens
    checkpoints.append(_checkpoint("trade"))

    # 3. Usage from both sides for two hours. The contract was bought a moment ago; it is dated
    # back three hours so that both hours fall inside it (the meter draws only on entitlements
    # bought before the usage ended) and both hours are over, as in production, when settled.
    Entitlement.objects.filter(pk=entitlement.pk).update(created_at=this_hour - 3 * HOUR)
    _ingest(provider, _records(market, buyer.org, prefix="a", hour=hour_a, figures=[250_000] * 4))
    _ingest(
        buyer,
        _records(market, provider.org, prefix="a", hour=hour_a, figures=[250_000] * 3 + [240_000]),
    )
    _ingest(provider, _records(market, buyer.org, prefix="b", hour=hour_b, figures=[500_000] * 3))
    _ingest(buyer, _records(market, provider.org, prefix="b", hour=hour_b, figures=[400_000] * 3))
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == HOUR_A_TOKENS + HOUR_B_TOKENS  # the provider's meter
    checkpoints.append(_checkpoint("usage"))  # all drawn from the entitlement: no money moved

    # 4. A run per hour, each once its grace has passed: the first pays, the second holds.
    def settle(hour: datetime) -> SettlementRun:
        return settlement_run(
            period_start=hour, period_end=hour + HOUR, now=hour + 2 * HOUR + timedelta(minutes=5)
        )

    run_a = settle(hour_a)
    assert (run_a.status, run_a.pair_hours_settled, run_a.pair_hours_held) == ("succeeded", 1, 0)
    assert (run_a.tokens_settled, run_a.delivered_micro, run_a.fees_micro) == (
        HOUR_A_TOKENS,
        4_800_000,
        4_800,
    )
    checkpoints.append(_checkpoint("run for the first hour"))
    run_b = settle(hour_b)
    assert (run_b.status, run_b.pair_hours_settled, run_b.pair_hours_held) == ("succeeded", 0, 1)
    assert run_b.delivered_micro == 0
    discrepancy = Discrepancy.objects.get()
    assert (discrepancy.hour, discrepancy.status, discrepancy.source) == (hour_b, "open", "buyer")
    assert (discrepancy.primary_tokens, discrepancy.other_tokens) == (
        HOUR_B_TOKENS,
        HOUR_B_BUYER_TOKENS,
    )
    checkpoints.append(_checkpoint("run for the second hour"))

    # 5. Staff resolve it; the next run pays the resolved figure and waives the rest.
    discrepancy_resolve(
        actor=staff,
        discrepancy_id=discrepancy.id,
        resolution=Discrepancy.Resolution.STATED,
        tokens=HOUR_B_RESOLVED,
        reason="Provider logs show 100,000 tokens of retried requests billed twice.",
    )
    run_c = settle(this_hour)
    assert (run_c.status, run_c.pair_hours_settled, run_c.pair_hours_held) == ("succeeded", 1, 0)
    assert (run_c.tokens_settled, run_c.tokens_waived) == (HOUR_B_RESOLVED, 100_000)
    assert (run_c.delivered_micro, run_c.fees_micro) == (6_720_000, 6_720)
    discrepancy.refresh_from_db()
    assert discrepancy.settled_run_id == run_c.id
    after_runs = _checkpoint("run after the resolution")
    checkpoints.append(after_runs)

    # 6. A payout of everything earned in whole cents. The send task is run here, not by the
    # worker: the transfer is faked at the gateway in this process (see FakeConnect), and the
    # worker would call Stripe for real. The confirmations come signed through the endpoint.
    connect = FakeConnect()
    for name in ("connected_account_create", "account_link_create", "transfer_create"):
        monkeypatch.setattr(stripe_gateway, name, getattr(connect, name))
    queued: list[int] = []
    monkeypatch.setattr(
        payout_send_task, "delay_on_commit", lambda payout_id: queued.append(payout_id)
    )
    payout_account_connect(principal=provider)
    account_event = se.event("account.updated", ce.account("acct_e2e_1"))
    _send_signed(live_server, localstripe.webhook_secret, account_event)
    wait_until(lambda: _processed(account_event["id"]), 30)
    assert PayoutAccount.objects.get(org=provider.org).is_enabled
    payout = payout_request(principal=provider, idempotency_key="e2e-payout-1")
    assert queued == [payout.id]
    payout_send(payout_id=payout.id)
    payout.refresh_from_db()
    assert (payout.status, payout.amount_micro, payout.stripe_transfer_id) == (
        Payout.Status.SENT,
        PAYOUT_MICRO,
        "tr_e2e_1",
    )
    assert [(t["amount_cents"], t["idempotency_key"]) for t in connect.transfers] == [
        (PAYOUT_MICRO // 10_000, f"payout:{payout.id}")
    ]
    transfer_event = se.event("transfer.created", ce.transfer(payout, transfer_id="tr_e2e_1"))
    _send_signed(live_server, localstripe.webhook_secret, transfer_event)
    wait_until(lambda: Payout.objects.get(pk=payout.pk).status == Payout.Status.PAID, 30)
    checkpoints.append(_checkpoint("payout"))

    # The provider: earned + paid out = delivered - its fees at delivery.
    earned = account_balance(org_id=provider.org.id, kind=Kind.EARNED)
    assert earned == DELIVERED_MICRO - PROVIDER_FEE_MICRO - PAYOUT_MICRO == 8_480
    assert account_balance(org_id=provider.org.id, kind=Kind.PAYOUT_PENDING) == 0
    assert earned + PAYOUT_MICRO == run_a.delivered_micro + run_c.delivered_micro - (
        run_a.fees_micro + run_c.fees_micro
    )
    # The platform: its fees are the buyer's at the trade plus the provider's at delivery.
    assert _fees_by_kind() == {"trade": BUYER_FEE_MICRO, "delivery": PROVIDER_FEE_MICRO}
    fees = LedgerAccount.objects.get(org=None, kind=Kind.FEES).balance_micro
    assert fees == trade.buyer_fee_micro + run_a.fees_micro + run_c.fees_micro == 59_520
    # The buyer: available + escrow + held = the top-up less what it paid (delivery and fee).
    balances = {k: account_balance(org_id=buyer.org.id, kind=k) for k in ORG_KINDS}
    assert balances == {
        Kind.AVAILABLE: TOPUP_MICRO - NOTIONAL_MICRO - BUYER_FEE_MICRO,
        Kind.HELD: 0,
        Kind.ESCROW: NOTIONAL_MICRO - DELIVERED_MICRO,
        Kind.EARNED: 0,
        Kind.PAYOUT_PENDING: 0,
    }
    assert sum(balances.values()) == TOPUP_MICRO - DELIVERED_MICRO - BUYER_FEE_MICRO
    entitlement.refresh_from_db()
    assert (entitlement.status, entitlement.charged_micro) == ("open", DELIVERED_MICRO)
    # Stripe's clearing account: the card top-up came in, the payout went out.
    clearing = LedgerAccount.objects.get(org=None, kind=Kind.STRIPE_CLEARING).balance_micro
    assert clearing == -TOPUP_MICRO + PAYOUT_MICRO

    # Statements: between the checkpoints, and as the runs wrote them.
    org_ids = {buyer.org.id, provider.org.id}
    b, p = buyer.org.id, provider.org.id
    hold_micro = LOTS * BID_MICRO * 10_025 // 10_000  # the bid's limit price and its fee at most
    _assert_statements_add_up(
        checkpoints,
        org_ids,
        {
            "top-up": {(b, Kind.AVAILABLE): {"topup": TOPUP_MICRO}},
            "trade": {
                # The hold's price improvement and unused fee margin come back at the fill.
                (b, Kind.AVAILABLE): {
                    "hold": -hold_micro,
                    "hold_release": hold_micro - NOTIONAL_MICRO - BUYER_FEE_MICRO,
                },
                (b, Kind.HELD): {
                    "hold": hold_micro,
                    "hold_release": NOTIONAL_MICRO + BUYER_FEE_MICRO - hold_micro,
                    "trade": -NOTIONAL_MICRO - BUYER_FEE_MICRO,
                },
                (b, Kind.ESCROW): {"trade": NOTIONAL_MICRO},
            },
            "usage": {},
            "run for the first hour": {
                (b, Kind.ESCROW): {"delivery": -4_800_000},
                (p, Kind.EARNED): {"delivery": 4_800_000 - 4_800},
            },
            "run for the second hour": {},
            "run after the resolution": {
                (b, Kind.ESCROW): {"delivery": -6_720_000},
                (p, Kind.EARNED): {"delivery": 6_720_000 - 6_720},
            },
            "payout": {(p, Kind.EARNED): {"payout": -PAYOUT_MICRO}},
        },
    )
    _assert_run_statements([run_a, run_b, run_c], after_runs=after_runs, org_ids=org_ids)
    assert ledger_check() == []
    assert "stripe_event_process_task" in celery_worker.output()


def _assert_run_statements(runs, *, after_runs: Checkpoint, org_ids) -> None:
    """Each run's lines add up, each run opens where the one before closed, and the last closes
    on the balances it left (less anything booked after its period, if the hour turned)."""
    lines = {
        run.id: {
            (line.org_id, line.account_kind): line
            for line in StatementLine.objects.filter(run=run, org_id__in=org_ids)
        }
        for run in runs
    }
    for run in runs:
        for line in lines[run.id].values():
            change = line.credits_micro - line.debits_micro
            assert line.closing_micro == line.opening_micro + change
            assert sum(line.movements.values()) == change
    for before, after in itertools.pairwise(runs):
        assert before.period_end == after.period_start
        for key, line in lines[after.id].items():
            opened = lines[before.id].get(key)
            assert line.opening_micro == (opened.closing_micro if opened else 0), key
    # Nothing was booked before the test began: the runs of the two past hours state nothing.
    assert lines[runs[0].id] == lines[runs[1].id] == {}
    last = runs[-1]
    later = {
        (row.org_id, row.account_kind): row.credits_micro - row.debits_micro
        for row in statement_rows(
            period_start=last.period_end, period_end=after_runs.at + timedelta(seconds=1)
        )
    }
    for key, balance in after_runs.balances.items():
        if key[0] in org_ids:
            closing = lines[last.id][key].closing_micro if key in lines[last.id] else 0
            assert closing + later.get(key, 0) == balance, key
