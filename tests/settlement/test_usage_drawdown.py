"""Draw-down order, pay-as-you-go past the entitlements, and delivery of drawn tokens."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from settlement.models import Entitlement, LedgerAccount, PaygMeter, UsageDraw
from settlement.selectors import account_balance
from settlement.services import (
    entitlement_deliver,
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
    usage_ingest,
)
from tests.settlement import usage_setup
from tests.settlement.usage_setup import BUYER_FUNDS_MICRO, usage

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)


def _balance(org, kind) -> int:
    return account_balance(org_id=org.id, kind=kind)


def _spend_all_but(org, keep_micro: int) -> None:
    """Move the org's available balance out, but `keep_micro`, as a payment elsewhere would."""
    with transaction.atomic():
        ledger_post(
            kind="transfer",
            postings=transfer(
                org_account(org_id=org.id, kind=Kind.AVAILABLE),
                platform_account(kind=Kind.STRIPE_CLEARING),
                _balance(org, Kind.AVAILABLE) - keep_micro,
            ),
            reference="spent-elsewhere",
        )


def _fees() -> int:
    return LedgerAccount.objects.get(org=None, kind=Kind.FEES).balance_micro


def test_the_earliest_expiry_is_drawn_first_then_the_oldest(seller, buyer, market, buy):
    now = timezone.now()
    late = buy(lots=2, expires_at=now + timedelta(days=9))
    soon_old = buy(lots=2, expires_at=now + timedelta(days=3))
    soon_new = buy(lots=2, expires_at=now + timedelta(days=3))

    [first] = usage_ingest(
        principal=seller,
        records=[usage(market, buyer.org, input_tokens=2_500_000, output_tokens=0)],
    )

    for entitlement in (late, soon_old, soon_new):
        entitlement.refresh_from_db()
    assert (soon_old.tokens_used, soon_new.tokens_used, late.tokens_used) == (
        2_000_000,
        500_000,
        0,
    )
    draws = list(UsageDraw.objects.filter(usage_record=first.record).order_by("id"))
    assert [(d.entitlement_id, d.tokens) for d in draws] == [
        (soon_old.id, 2_000_000),
        (soon_new.id, 500_000),
    ]
    assert first.record.entitlement_tokens == 2_500_000
    assert ledger_check() == []


def test_an_entitlement_that_expired_before_the_usage_is_not_drawn(seller, buyer, market, buy):
    now = timezone.now()
    stale = buy(lots=2, expires_at=now - timedelta(minutes=1))
    fresh = buy(lots=2)

    usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.tokens_used, fresh.tokens_used) == (0, 1_600)


def test_usage_past_the_entitlements_is_charged_at_the_reference_price(seller, buyer, market, buy):
    entitlement = buy(lots=2)  # 2M tokens; the trade leaves an open ask-free book
    available_before = _balance(buyer.org, Kind.AVAILABLE)
    fees_before = _fees()

    [result] = usage_ingest(
        principal=seller,
        records=[usage(market, buyer.org, input_tokens=2_300_001, output_tokens=0)],
    )

    record = result.record
    # The trade at $5.00 is the last 24 hours' VWAP.
    assert (record.entitlement_tokens, record.payg_tokens) == (2_000_000, 300_001)
    assert record.payg_price_micro == 5_000_000
    assert record.payg_cost_micro == 1_500_005  # 300,001 x $5 / 1M
    assert record.payg_fee_micro == 1_500  # 10 bp, rounded down
    assert _balance(buyer.org, Kind.AVAILABLE) == available_before - 1_500_005
    assert _balance(seller.org, Kind.EARNED) == 1_500_005 - 1_500
    assert _fees() - fees_before == 1_500
    assert record.unfunded_tokens == record.unfunded_micro == 0
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == entitlement.tokens_bought
    assert entitlement.status == Entitlement.Status.OPEN  # paid for when delivered
    assert ledger_check() == []


def test_pay_as_you_go_never_takes_the_balance_below_zero(seller, buyer, market, buy):
    buy(lots=2)
    _spend_all_but(buyer.org, 1_000_003)

    [result] = usage_ingest(
        principal=seller,
        records=[usage(market, buyer.org, input_tokens=2_000_000 + 1_000_000, output_tokens=0)],
    )

    record = result.record
    # $1.000003 pays for 200,000 tokens at $5 ($1.000000) and no more: 200,001 would cost more.
    assert record.payg_tokens == 200_000
    assert record.payg_cost_micro == 1_000_000
    assert record.unfunded_tokens == 800_000
    assert record.unfunded_micro == 4_000_000
    assert _balance(buyer.org, Kind.AVAILABLE) == 3
    meter = PaygMeter.objects.get(buyer_org=buyer.org, provider_org=seller.org, market=market)
    assert (meter.unfunded_tokens, meter.unfunded_micro) == (800_000, 4_000_000)
    assert ledger_check() == []


def test_a_buyer_with_no_balance_is_recorded_unfunded_not_lost(seller, buyer, market, buy):
    buy(lots=2)
    _spend_all_but(buyer.org, 0)

    results = usage_ingest(
        principal=seller,
        records=[
            usage(market, buyer.org, input_tokens=2_000_000, output_tokens=0),
            usage(market, buyer.org, input_tokens=1_000, output_tokens=0),
        ],
    )

    assert results[1].record.payg_cost_micro == 0
    assert results[1].record.unfunded_tokens == 1_000
    assert results[1].record.unfunded_micro == 5_000
    assert _balance(buyer.org, Kind.AVAILABLE) == 0
    assert ledger_check() == []


def test_delivery_moves_escrow_to_the_provider_by_cumulative_rounding(seller, buyer, market, buy):
    entitlement = buy(lots=2, price_micro=4_010_000)  # $4.01 per 1M: 1 token = 4.01 micro-USD
    escrow_before = _balance(buyer.org, Kind.ESCROW)
    fee_bp = entitlement.provider_fee_bp
    delivered = 0
    for tokens in (1, 1, 1, 333, 1_000_000 - 336):
        usage_ingest(
            principal=seller,
            records=[usage(market, buyer.org, input_tokens=tokens, output_tokens=0)],
        )
        delivered += tokens
        with transaction.atomic():
            entitlement_deliver(entitlement_id=entitlement.id)
        entitlement.refresh_from_db()
        assert entitlement.charged_micro == delivered * 4_010_000 // 1_000_000
        assert ledger_check() == []

    assert entitlement.charged_micro == 4_010_000
    assert escrow_before - _balance(buyer.org, Kind.ESCROW) == 4_010_000
    assert _balance(seller.org, Kind.EARNED) == 4_010_000 - 4_010_000 * fee_bp // 10_000
    with transaction.atomic():
        assert entitlement_deliver(entitlement_id=entitlement.id) is None  # nothing more due


def test_a_fully_used_and_delivered_entitlement_is_exhausted(seller, buyer, market, buy):
    entitlement = buy(lots=2)
    usage_ingest(
        principal=seller,
        records=[usage(market, buyer.org, input_tokens=2_000_000, output_tokens=0)],
    )

    with transaction.atomic():
        entitlement_deliver(entitlement_id=entitlement.id)

    entitlement.refresh_from_db()
    assert entitlement.status == Entitlement.Status.EXHAUSTED
    assert entitlement.charged_micro == entitlement.value_micro
    assert _balance(buyer.org, Kind.ESCROW) == 0
    assert _balance(buyer.org, Kind.AVAILABLE) < BUYER_FUNDS_MICRO
    assert ledger_check() == []


def test_an_entitlement_draws_in_its_own_contract_weights(seller, buyer, market, buy):
    # Traded when output weighed 3x: 1,000 input and 100 output tokens are 1,300 of its tokens
    # and cover the record's 1,600 billable tokens at the market's 6x.
    entitlement = buy(output_weight_bp=30_000)

    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    draw = UsageDraw.objects.get(usage_record_id=result.record.id)
    assert (draw.tokens, draw.covered_tokens) == (1_300, 1_600)
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 1_300
    assert result.record.entitlement_tokens == 1_600
    assert ledger_check() == []


def test_a_short_entitlement_in_other_weights_covers_its_share(seller, buyer, market, buy):
    entitlement = buy(output_weight_bp=30_000)
    left_650 = entitlement.tokens_bought - 650
    Entitlement.objects.filter(pk=entitlement.pk).update(tokens_used=left_650)

    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    draw = UsageDraw.objects.get(usage_record_id=result.record.id)
    # 650 of its 1,300 tokens cover half the record: 800 billable; the rest is pay-as-you-go.
    assert (draw.tokens, draw.covered_tokens) == (650, 800)
    assert (result.record.entitlement_tokens, result.record.payg_tokens) == (800, 800)
    assert ledger_check() == []
