"""Cumulative rounding: however usage is split, it costs exactly what one big draw costs."""

from types import SimpleNamespace

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import Role
from accounts.principal import Principal
from core.units import cost_floor_micro
from settlement.models import Entitlement, LedgerAccount
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
from settlement.services.usage import _charge
from tests.accounts.factories import MembershipFactory
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory
from tests.settlement.usage_setup import buy_entitlement, usage

Kind = LedgerAccount.Kind

splits = st.lists(st.integers(min_value=1, max_value=3_000_000), min_size=1, max_size=30)
prices = st.integers(min_value=1, max_value=60_000_000)


def _meter():
    return SimpleNamespace(
        remainder=0, tokens=0, charged_micro=0, unfunded_tokens=0, unfunded_micro=0
    )


def _record():
    return SimpleNamespace()


@given(parts=splits, price_micro=prices)
def test_many_payg_charges_cost_exactly_one_big_one(parts, price_micro):
    meter = _meter()
    charged = 0
    for tokens in parts:
        record = _record()
        _charge(record, tokens, meter, price_micro=price_micro, fee_bp=0, available_micro=10**15)
        charged += record.payg_cost_micro
    assert charged == cost_floor_micro(tokens=sum(parts), price_micro_per_m=price_micro)
    assert meter.unfunded_micro == 0


@given(
    parts=st.lists(st.tuples(st.integers(1, 3_000_000), prices), min_size=1, max_size=30),
    available_micro=st.integers(min_value=0, max_value=50_000_000),
)
def test_payg_under_moving_prices_and_a_short_balance_loses_nothing(parts, available_micro):
    meter = _meter()
    left = available_micro
    for tokens, price_micro in parts:
        record = _record()
        _charge(record, tokens, meter, price_micro=price_micro, fee_bp=25, available_micro=left)
        assert 0 <= record.payg_cost_micro <= left  # never below zero
        assert record.payg_tokens + record.unfunded_tokens == tokens
        assert record.payg_fee_micro <= record.payg_cost_micro
        left -= record.payg_cost_micro
    owed = sum(tokens * price for tokens, price in parts) // 1_000_000
    assert meter.charged_micro + meter.unfunded_micro == owed  # charged or recorded, never lost
    assert meter.charged_micro == available_micro - left


def _stage():
    """A fresh market, a provider selling in it and a funded buyer who bought 3M tokens there."""
    market = MarketFactory()
    seller = Principal.for_membership(
        MembershipFactory(org__is_buyer=False, org__is_provider=True, role=Role.OWNER)
    )
    ProviderEndpointFactory(org=seller.org, market=market)
    buyer = Principal.for_membership(MembershipFactory(role=Role.OWNER))
    with transaction.atomic():
        ledger_post(
            kind="transfer",
            postings=transfer(
                platform_account(kind=Kind.STRIPE_CLEARING),
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                1_000_000_000,
            ),
            reference="test-funding",
        )
    entitlement = buy_entitlement(
        buyer=buyer, seller=seller, market=market, lots=3, price_micro=4_010_000
    )
    return market, seller, buyer, entitlement


@pytest.mark.django_db
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.integers(min_value=1, max_value=400_000), min_size=1, max_size=12))
def test_drawing_and_delivering_in_pieces_pays_what_one_big_draw_pays(parts):
    market, seller, buyer, entitlement = _stage()
    for tokens in parts:
        usage_ingest(
            principal=seller,
            records=[usage(market, buyer.org, input_tokens=tokens, output_tokens=0)],
        )
        with transaction.atomic():
            entitlement_deliver(entitlement_id=entitlement.id)

    entitlement = Entitlement.objects.get(pk=entitlement.pk)
    drawn = min(sum(parts), 3_000_000)
    assert entitlement.tokens_used == drawn
    one_big = cost_floor_micro(tokens=drawn, price_micro_per_m=4_010_000)
    assert entitlement.charged_micro == one_big
    fee = one_big * entitlement.provider_fee_bp // 10_000
    payg_earned = sum(
        r.payg_cost_micro - r.payg_fee_micro for r in entitlement.provider_org.usage_served.all()
    )
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == one_big - fee + payg_earned
    assert ledger_check() == []
