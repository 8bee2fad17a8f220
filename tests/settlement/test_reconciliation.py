"""Reconciliation: tolerance edges, missing reports after the grace, holds and resolutions.

Usage goes in through usage_ingest: the provider's report is the primary meter (the relay did
not serve these requests) and draws the entitlement down; the buyer's report checks it.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.principal import Principal
from core.errors import PermissionDenied, ValidationFailed
from settlement.errors import DiscrepancyResolved
from settlement.models import (
    Discrepancy,
    LedgerAccount,
    SettlementAudit,
    UsageRecord,
    UsageSource,
)
from settlement.selectors import account_balance
from settlement.services import discrepancy_resolve, ledger_check
from settlement.services.reconciliation import is_within_tolerance
from tests.accounts.factories import MembershipFactory, UserFactory
from tests.settlement import usage_setup
from tests.settlement.settlement_setup import HOUR, report, settle

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

Kind = LedgerAccount.Kind


@pytest.fixture
def moment(buy):
    """An entitlement of 2M tokens at $5.00 per 1M is bought; usage ends a second later."""
    buy.entitlement = buy(lots=2)
    return timezone.now()


def _tight(market, *, bp=200, floor=0):
    market.reconcile_tolerance_bp = bp
    market.reconcile_floor_tokens = floor
    market.save()


@pytest.mark.parametrize(
    ("primary", "other", "bp", "floor", "within"),
    [
        (100_000, 102_000, 200, 0, True),  # exactly 2 %
        (100_000, 102_001, 200, 0, False),  # one token over
        (100_000, 98_000, 200, 0, True),  # under counts the same
        (100_000, 97_999, 200, 0, False),
        (10_000, 11_000, 200, 1_000, True),  # the floor passes what the percentage would not
        (10_000, 11_001, 200, 1_000, False),
        (0, 1_000, 200, 1_000, True),
        (0, 1_001, 200, 1_000, False),
    ],
)
def test_tolerance_is_the_larger_of_the_percentage_and_the_floor(primary, other, bp, floor, within):
    assert (
        is_within_tolerance(
            primary_tokens=primary, other_tokens=other, tolerance_bp=bp, floor_tokens=floor
        )
        is within
    )


def test_a_buyer_report_exactly_at_the_tolerance_settles_on_the_primary_figure(
    buyer, seller, market, moment
):
    _tight(market)
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    report(buyer, seller.org, market, tokens=102_000, at=moment)
    run = settle(moment)
    assert run.pair_hours_settled == 1 and run.pair_hours_held == 0
    assert not Discrepancy.objects.exists()
    assert run.tokens_settled == 100_000
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == 500_000 - 500
    assert ledger_check() == []


def test_a_buyer_report_one_token_past_the_tolerance_holds_the_hour(buyer, seller, market, moment):
    _tight(market)
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    report(buyer, seller.org, market, tokens=102_001, at=moment)
    run = settle(moment)
    discrepancy = Discrepancy.objects.get()
    assert (discrepancy.primary_tokens, discrepancy.other_tokens) == (100_000, 102_001)
    assert discrepancy.source == Discrepancy.Source.BUYER and discrepancy.is_open
    assert discrepancy.hour == moment.replace(minute=0, second=0, microsecond=0)
    assert run.pair_hours_held == 1 and run.tokens_settled == 0
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == 0
    assert account_balance(org_id=buyer.org.id, kind=Kind.ESCROW) == 10_000_000
    assert ledger_check() == []


def test_the_floor_lets_a_small_difference_pass(buyer, seller, market, moment):
    _tight(market, bp=0, floor=1_000)
    report(seller, buyer.org, market, tokens=5_000, at=moment)
    report(buyer, seller.org, market, tokens=6_000, at=moment)
    assert settle(moment).pair_hours_settled == 1
    assert not Discrepancy.objects.exists()


def test_an_hour_is_not_judged_before_its_grace_has_passed(buyer, seller, market, moment):
    _tight(market)
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    report(buyer, seller.org, market, tokens=150_000, at=moment)
    hour = moment.replace(minute=0, second=0, microsecond=0)
    run = settle(moment, now=hour + HOUR + timedelta(minutes=30))
    assert run.pair_hours_pending == 1 and run.tokens_settled == 0
    assert not Discrepancy.objects.exists()
    assert ledger_check() == []


def _relay_record(buyer_org, provider_org, market, *, tokens: int, at):
    return UsageRecord.objects.create(
        source=UsageSource.RELAY,
        request_id=f"relay-{UsageRecord.objects.count()}",
        batch_id="00000000-0000-0000-0000-000000000001",
        market=market,
        buyer_org=buyer_org,
        provider_org=provider_org,
        model="model-a",
        input_tokens=tokens,
        cached_input_tokens=0,
        output_tokens=0,
        billable_tokens=tokens,
        output_weight_bp=market.output_weight_bp,
        cache_weight_bp=market.cache_weight_bp,
        is_primary=True,
        started_at=at - timedelta(seconds=1),
        ended_at=at,
    )


def test_a_missing_provider_report_after_the_grace_is_a_discrepancy(buyer, seller, market, moment):
    _relay_record(buyer.org, seller.org, market, tokens=40_000, at=moment)
    hour = moment.replace(minute=0, second=0, microsecond=0)
    early = settle(moment, now=hour + HOUR + timedelta(minutes=59))
    assert early.pair_hours_pending == 1 and not Discrepancy.objects.exists()
    later = settle(moment + HOUR, now=hour + 2 * HOUR + timedelta(minutes=5))
    discrepancy = Discrepancy.objects.get()
    assert discrepancy.is_missing and discrepancy.source == Discrepancy.Source.PROVIDER
    assert (discrepancy.primary_tokens, discrepancy.other_tokens) == (40_000, 0)
    assert later.pair_hours_held == 1


def test_a_provider_report_that_matches_the_relay_settles(buyer, seller, market, moment):
    relayed = _relay_record(buyer.org, seller.org, market, tokens=40_000, at=moment)
    checked = report(
        seller, buyer.org, market, tokens=40_000, at=moment, request_id=relayed.request_id
    )
    assert not checked.is_primary  # the relay metered that request
    assert settle(moment).pair_hours_held == 0
    assert not Discrepancy.objects.exists()


@pytest.fixture
def held(buyer, seller, market, moment):
    """An hour with 100,000 tokens on the primary meter and 80,000 by the buyer: held."""
    _tight(market)
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    report(buyer, seller.org, market, tokens=80_000, at=moment)
    settle(moment)
    return Discrepancy.objects.get()


def _resolve_and_settle(held, staff, moment, **resolution):
    discrepancy = discrepancy_resolve(
        actor=staff, discrepancy_id=held.id, reason="Checked the request logs.", **resolution
    )
    # The held hour is paid by the next run, for the next period.
    run = settle(moment + HOUR)
    discrepancy.refresh_from_db()
    return discrepancy, run


def test_accepting_the_primary_meter_pays_the_held_hour_in_full(held, staff, seller, moment):
    discrepancy, run = _resolve_and_settle(held, staff, moment, resolution="accept_primary")
    assert discrepancy.resolved_tokens == 100_000 and discrepancy.settled_run == run
    assert run.tokens_settled == 100_000 and run.tokens_waived == 0
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == 500_000 - 500
    audit = SettlementAudit.objects.get(discrepancy=discrepancy)
    assert audit.actor == staff and audit.reason == "Checked the request logs."
    assert audit.details["resolution"] == "accept_primary"
    assert ledger_check() == []


def test_accepting_the_lower_report_pays_only_it_and_refunds_the_rest_at_close(
    held, staff, buyer, seller, moment
):
    discrepancy, run = _resolve_and_settle(held, staff, moment, resolution="accept_other")
    assert discrepancy.resolved_tokens == 80_000
    assert run.tokens_settled == 80_000 and run.tokens_waived == 20_000
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == 400_000 - 400
    assert account_balance(org_id=buyer.org.id, kind=Kind.ESCROW) == 10_000_000 - 400_000
    # Paying the hour again changes nothing.
    assert settle(moment + 2 * HOUR).tokens_settled == 0
    # At expiry the waived tokens' value comes back with the unused escrow.
    entitlement = held.buyer_org.entitlements_bought.get()
    entitlement.expires_at = moment + 2 * HOUR
    entitlement.save()
    available = account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    closing = settle(moment + 3 * HOUR)
    assert closing.refunded_micro == 10_000_000 - 400_000
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == available + 9_600_000
    assert account_balance(org_id=buyer.org.id, kind=Kind.ESCROW) == 0
    assert ledger_check() == []


def test_a_stated_figure_pays_that_many_tokens(held, staff, seller, moment):
    discrepancy, run = _resolve_and_settle(held, staff, moment, resolution="stated", tokens=90_000)
    assert discrepancy.resolution == "stated" and discrepancy.resolved_tokens == 90_000
    assert run.tokens_settled == 90_000 and run.tokens_waived == 10_000
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == 450_000 - 450
    assert ledger_check() == []


def test_a_figure_above_the_meter_pays_no_more_than_was_drawn(held, staff, seller, moment):
    _, run = _resolve_and_settle(held, staff, moment, resolution="stated", tokens=150_000)
    assert run.tokens_settled == 100_000
    assert ledger_check() == []


def test_only_staff_resolve_and_always_with_a_reason(held, buyer, staff):
    with pytest.raises(PermissionDenied):
        discrepancy_resolve(
            actor=buyer.user, discrepancy_id=held.id, resolution="accept_primary", reason="mine"
        )
    staff_without_the_permission = UserFactory(is_staff=True)
    with pytest.raises(PermissionDenied):
        discrepancy_resolve(
            actor=staff_without_the_permission,
            discrepancy_id=held.id,
            resolution="accept_primary",
            reason="looks fine",
        )
    with pytest.raises(ValidationFailed):
        discrepancy_resolve(
            actor=staff, discrepancy_id=held.id, resolution="accept_primary", reason="  "
        )
    with pytest.raises(ValidationFailed):
        discrepancy_resolve(actor=staff, discrepancy_id=held.id, resolution="stated", reason="x")
    held.refresh_from_db()
    assert held.is_open and not SettlementAudit.objects.exists()


def test_a_resolved_discrepancy_cannot_be_resolved_again(held, staff):
    discrepancy_resolve(actor=staff, discrepancy_id=held.id, resolution="accept_other", reason="a")
    with pytest.raises(DiscrepancyResolved):
        discrepancy_resolve(
            actor=staff, discrepancy_id=held.id, resolution="accept_primary", reason="b"
        )
    assert SettlementAudit.objects.count() == 1


def test_both_orgs_see_the_discrepancy_and_no_one_else_does(held, buyer, seller, api_for):
    for principal in (buyer, seller):
        response = api_for(principal).get("/api/v1/discrepancies")
        assert response.status_code == 200
        (row,) = response.json()["results"]
        assert row["id"] == held.id and row["status"] == "open"
        assert (row["primary_tokens"], row["other_tokens"]) == (100_000, 80_000)
    stranger = MembershipFactory(org__name="Someone Else")
    response = api_for(Principal.for_membership(stranger)).get("/api/v1/discrepancies")
    assert response.json()["results"] == []


def test_the_discrepancy_list_rejects_an_unknown_status(held, buyer, api_for):
    response = api_for(buyer).get("/api/v1/discrepancies?status=maybe")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["status"]


def test_staff_resolve_a_discrepancy_in_the_admin_with_a_reason(held, staff, client):
    client.force_login(staff)
    url = f"/admin/settlement/discrepancy/{held.id}/resolve/"
    assert client.get(url).status_code == 200
    refused = client.post(url, {"resolution": "stated", "reason": "Logs say so."})
    assert refused.status_code == 200 and b"State a whole number" in refused.content
    response = client.post(
        url, {"resolution": "stated", "tokens": "95000", "reason": "Logs say so."}
    )
    assert response.status_code == 302
    held.refresh_from_db()
    assert (held.status, held.resolved_tokens, held.resolved_by) == ("resolved", 95_000, staff)
    assert SettlementAudit.objects.get(discrepancy=held).reason == "Logs say so."


def test_the_admin_resolve_page_needs_the_permission(held, client):
    operator = MembershipFactory().user
    operator.is_staff = True
    operator.save()
    client.force_login(operator)
    assert client.get(f"/admin/settlement/discrepancy/{held.id}/resolve/").status_code == 403


def test_a_record_drawn_from_two_entitlements_counts_once_with_its_pay_as_you_go_part(
    buyer, seller, market, buy
):
    first, second = buy(lots=2), buy(lots=2)
    for entitlement in (first, second):
        entitlement.tokens_used = entitlement.tokens_bought - 500
        entitlement.save()
    moment = timezone.now()
    _tight(market, bp=0, floor=0)
    record = report(seller, buyer.org, market, tokens=3_000, at=moment)
    assert record.draws.count() == 2 and record.payg_tokens == 2_000
    report(buyer, seller.org, market, tokens=3_000, at=moment)
    run = settle(moment)
    assert run.pair_hours_held == 0 and not Discrepancy.objects.exists()
    assert run.tokens_settled == 1_000
    assert ledger_check() == []
