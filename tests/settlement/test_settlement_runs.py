"""Settlement runs: delivery, idempotency, crash and re-run, expiry, the ledger check, the task.

The buyer holds an entitlement of 2M tokens bought at $5.00 per 1M ($10.00 in escrow) from a
provider whose fee on delivery is 10 bp.
"""

from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from config.celery import app as celery_app
from core.errors import PermissionDenied
from settlement.errors import SettlementPeriodInvalid, SettlementRunFailed
from settlement.models import (
    Entitlement,
    LedgerAccount,
    LedgerTransaction,
    SettledUsage,
    SettlementAudit,
    SettlementRun,
    StatementLine,
)
from settlement.selectors import account_balance
from settlement.services import ledger_check, settlement_run
from settlement.tasks import settlement_run_task
from tests.concurrency import race
from tests.settlement import usage_setup
from tests.settlement.settlement_setup import HOUR, hour_of, report, settle

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

Kind = LedgerAccount.Kind
VALUE_MICRO = 10_000_000


@pytest.fixture
def bought(buy):
    return buy(lots=2)


@pytest.fixture
def moment(bought):
    return timezone.now()


def _balances(buyer, seller) -> dict:
    return {
        "escrow": account_balance(org_id=buyer.org.id, kind=Kind.ESCROW),
        "buyer_available": account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE),
        "earned": account_balance(org_id=seller.org.id, kind=Kind.EARNED),
        "fees": LedgerAccount.objects.get(org=None, kind=Kind.FEES).balance_micro,
    }


def test_a_run_pays_reconciled_usage_from_escrow_to_earned_less_the_fee(
    buyer, seller, market, moment, bought
):
    report(seller, buyer.org, market, tokens=300_001, at=moment)
    before = _balances(buyer, seller)
    run = settle(moment)
    after = _balances(buyer, seller)
    # floor(300,001 x 5 / 1) micro-USD = 1,500,005; fee floor(1,500,005 x 10 bp) = 1,500.
    assert run.status == SettlementRun.Status.SUCCEEDED
    assert run.tokens_settled == 300_001 and run.delivered_micro == 1_500_005
    assert run.fees_micro == 1_500
    assert after["escrow"] == before["escrow"] - 1_500_005
    assert after["earned"] == before["earned"] + 1_500_005 - 1_500
    assert after["fees"] == before["fees"] + 1_500
    bought.refresh_from_db()
    assert bought.charged_micro == 1_500_005 and bought.status == Entitlement.Status.OPEN
    assert ledger_check() == []


def test_charges_round_cumulatively_across_runs(buyer, seller, market, moment, bought):
    # At $3.33 per 1M one token is worth 3.33 micro-USD: charged floor(1 x 3.33) = 3 at first,
    # then floor(2 x 3.33) = 6 in all, so the second token costs 3, not a drifting floor(3.33).
    Entitlement.objects.filter(pk=bought.pk).update(price_micro=3_330_000)
    report(seller, buyer.org, market, tokens=1, at=moment)
    first = settle(moment)
    report(seller, buyer.org, market, tokens=1, at=moment)  # late, for the same hour
    second = settle(moment + HOUR)
    third = settle(moment + 2 * HOUR)
    assert (first.delivered_micro, second.delivered_micro, third.delivered_micro) == (3, 3, 0)
    bought.refresh_from_db()
    assert bought.charged_micro == 6
    assert SettledUsage.objects.filter(entitlement=bought).count() == 2
    assert ledger_check() == []


def test_a_rerun_of_a_settled_period_pays_nothing(buyer, seller, market, moment):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    first = settle(moment)
    transactions = LedgerTransaction.objects.count()
    again = settle(moment)
    assert again.pk == first.pk and again.attempts == 1
    assert LedgerTransaction.objects.count() == transactions
    assert ledger_check() == []


def test_usage_that_arrives_late_for_a_settled_hour_is_paid_once_by_the_next_run(
    buyer, seller, market, moment
):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    settle(moment)
    report(seller, buyer.org, market, tokens=20_000, at=moment)
    later = settle(moment + HOUR)
    assert later.tokens_settled == 20_000
    assert settle(moment + 2 * HOUR).tokens_settled == 0
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == 600_000 - 600


def test_a_run_that_crashed_after_paying_is_redone_and_pays_once(buyer, seller, market, moment):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    before = _balances(buyer, seller)
    with (
        mock.patch(
            "settlement.services.settlement_runs._write_statement",
            side_effect=RuntimeError("worker killed"),
        ),
        pytest.raises(RuntimeError, match="worker killed"),
    ):
        settle(moment)
    # The transaction rolled back: no run, no payment, nothing half done.
    assert not SettlementRun.objects.exists()
    assert _balances(buyer, seller) == before
    assert not SettledUsage.objects.exists()
    run = settle(moment)
    assert run.status == SettlementRun.Status.SUCCEEDED and run.attempts == 1
    assert run.tokens_settled == 100_000
    assert _balances(buyer, seller)["earned"] == before["earned"] + 500_000 - 500
    assert settle(moment).tokens_settled == 100_000  # the same run, returned as it was
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.DELIVERY).count() == 1
    assert ledger_check() == []


def test_a_ledger_breach_fails_the_run_loudly_and_pays_nothing(buyer, seller, market, moment):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    before = _balances(buyer, seller)
    with (
        mock.patch(
            "settlement.services.settlement_runs.ledger_check",
            return_value=["org 1 has 5 in escrow but its open entitlements hold 4"],
        ),
        pytest.raises(SettlementRunFailed),
    ):
        settle(moment)
    run = SettlementRun.objects.get()
    assert run.status == SettlementRun.Status.FAILED and "escrow" in run.problems
    assert run.tokens_settled == 0 and run.delivered_micro == 0
    assert _balances(buyer, seller) == before
    assert not SettledUsage.objects.exists() and not StatementLine.objects.exists()
    # Once the ledger is sound, the same period runs again and pays.
    again = settle(moment)
    assert again.pk == run.pk and again.status == SettlementRun.Status.SUCCEEDED
    assert again.attempts == 2 and again.problems == ""
    assert again.tokens_settled == 100_000
    assert ledger_check() == []


def test_expiry_refunds_the_unused_escrow_to_the_buyer(buyer, seller, market, moment, bought):
    report(seller, buyer.org, market, tokens=400_000, at=moment)
    Entitlement.objects.filter(pk=bought.pk).update(expires_at=hour_of(moment) + HOUR)
    before = _balances(buyer, seller)
    run = settle(moment)
    bought.refresh_from_db()
    assert bought.status == Entitlement.Status.EXPIRED and bought.closed_at is not None
    assert run.entitlements_expired == 1
    assert run.delivered_micro == 2_000_000 and run.refunded_micro == VALUE_MICRO - 2_000_000
    after = _balances(buyer, seller)
    assert after["escrow"] == 0
    assert after["buyer_available"] == before["buyer_available"] + 8_000_000
    assert after["earned"] == before["earned"] + 2_000_000 - 2_000
    assert ledger_check() == []


def test_expiry_under_forfeit_pays_the_unused_escrow_on_to_the_provider(
    buyer, seller, market, moment, bought
):
    report(seller, buyer.org, market, tokens=400_000, at=moment)
    Entitlement.objects.filter(pk=bought.pk).update(
        expires_at=hour_of(moment) + HOUR, expiry_policy=Entitlement.ExpiryPolicy.FORFEIT
    )
    before = _balances(buyer, seller)
    run = settle(moment)
    bought.refresh_from_db()
    assert bought.status == Entitlement.Status.EXPIRED
    assert bought.charged_micro == VALUE_MICRO
    assert run.forfeited_micro == 8_000_000 and run.refunded_micro == 0
    after = _balances(buyer, seller)
    assert after["escrow"] == 0 and after["buyer_available"] == before["buyer_available"]
    assert after["earned"] == before["earned"] + VALUE_MICRO - 10_000
    assert after["fees"] == before["fees"] + 10_000
    assert ledger_check() == []


def test_an_entitlement_does_not_expire_while_its_hour_is_held(
    buyer, seller, market, moment, bought
):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    report(buyer, seller.org, market, tokens=50_000, at=moment)
    Entitlement.objects.filter(pk=bought.pk).update(expires_at=hour_of(moment) + HOUR)
    run = settle(moment)
    bought.refresh_from_db()
    assert run.pair_hours_held == 1 and bought.status == Entitlement.Status.OPEN
    assert account_balance(org_id=buyer.org.id, kind=Kind.ESCROW) == VALUE_MICRO
    assert ledger_check() == []


def test_a_used_up_entitlement_closes_exhausted(buyer, seller, market, moment, bought):
    report(seller, buyer.org, market, tokens=2_000_000, at=moment)
    run = settle(moment)
    bought.refresh_from_db()
    assert bought.status == Entitlement.Status.EXHAUSTED and bought.charged_micro == VALUE_MICRO
    assert run.entitlements_exhausted == 1 and run.rounding_micro == 0
    assert account_balance(org_id=buyer.org.id, kind=Kind.ESCROW) == 0
    assert ledger_check() == []


def test_value_above_the_tokens_worth_is_booked_to_rounding_at_close(
    buyer, seller, market, moment, bought
):
    # Off the tick grid (no trade can do this): 2M tokens at $4.999999 per 1M are worth
    # 9,999,998 micro-USD, so 2 micro-USD of the 10,000,000 paid are a remainder.
    Entitlement.objects.filter(pk=bought.pk).update(price_micro=4_999_999)
    report(seller, buyer.org, market, tokens=2_000_000, at=moment)
    run = settle(moment)
    assert run.entitlements_exhausted == 1 and run.rounding_micro == 2
    assert LedgerAccount.objects.get(org=None, kind=Kind.ROUNDING).balance_micro == 2
    assert account_balance(org_id=buyer.org.id, kind=Kind.ESCROW) == 0
    assert ledger_check() == []


def test_an_hour_still_in_grace_is_paid_by_a_later_run(buyer, seller, market, moment):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    hour = hour_of(moment)
    first = settle(moment, now=hour + HOUR + timedelta(minutes=5))
    assert first.pair_hours_pending == 1 and first.tokens_settled == 0
    second = settle(moment + HOUR, now=hour + 2 * HOUR + timedelta(minutes=5))
    assert second.tokens_settled == 100_000
    assert ledger_check() == []


def test_a_run_by_staff_is_audited_and_a_non_staff_user_may_not_start_one(
    buyer, seller, market, moment, staff
):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    with pytest.raises(PermissionDenied):
        settle(moment, actor=buyer.user)
    run = settle(moment, actor=staff)
    assert run.started_by == staff
    assert SettlementAudit.objects.get(action="run_started").run == run


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (timezone.now().replace(minute=30), None),
        (None, timezone.now().replace(minute=0, second=0, microsecond=0) - HOUR),
    ],
)
def test_a_period_is_whole_hours_and_not_empty(db, start, end):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    with pytest.raises(SettlementPeriodInvalid):
        settlement_run(period_start=start or hour, period_end=end or hour + HOUR)


def test_the_task_runs_the_hour_it_is_given_once(buyer, seller, market, moment):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    start = hour_of(moment) - 2 * HOUR
    assert settlement_run_task(start.isoformat()) == "succeeded"
    assert settlement_run_task(start.isoformat()) == "succeeded"
    assert SettlementRun.objects.filter(period_start=start).count() == 1


def test_the_schedule_runs_it_every_hour_at_five_past():
    entry = celery_app.conf.beat_schedule["settlement-run"]
    assert entry["task"] == "settlement.tasks.settlement_run_task"
    assert entry["schedule"].minute == {5} and entry["schedule"].hour == set(range(24))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_runs_of_the_same_period_at_once_pay_once(buyer, seller, market, buy):
    buy(lots=2)
    moment = timezone.now()
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    assert connection.vendor == "postgresql"
    results = race(4, lambda i: settle(moment).pk)
    assert len(set(results)) == 1, results
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.DELIVERY).count() == 1
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == 500_000 - 500
    assert ledger_check() == []


def test_staff_with_the_permission_run_settlement_from_the_admin(
    buyer, seller, market, moment, staff, client
):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    client.force_login(staff)
    start = hour_of(moment) - 3 * HOUR
    response = client.post(
        "/admin/settlement/settlementrun/run/",
        {"period_start": start.strftime("%Y-%m-%d %H:%M"), "hours": "1"},
    )
    assert response.status_code == 302
    run = SettlementRun.objects.get()
    assert run.period_start == start and run.started_by == staff
    assert client.get("/admin/settlement/settlementrun/").status_code == 200


def test_the_admin_run_page_needs_the_permission(db, client):
    from tests.accounts.factories import UserFactory

    client.force_login(UserFactory(is_staff=True))
    assert client.get("/admin/settlement/settlementrun/run/").status_code == 403


def test_a_breach_seen_once_is_looked_at_again_before_the_run_fails(buyer, seller, market, moment):
    # A concurrent commit between two of ledger_check's queries looks like a breach once.
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    looks = iter([["org 1 holds 5 but its open holds total 4"], []])
    with mock.patch(
        "settlement.services.settlement_runs.ledger_check", side_effect=lambda: next(looks)
    ):
        run = settle(moment)
    assert (run.status, run.tokens_settled) == (SettlementRun.Status.SUCCEEDED, 100_000)
    assert ledger_check() == []


def test_draws_beyond_what_an_entitlement_used_fail_the_run(buyer, seller, market, moment, bought):
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    # A bug in the meter, made by hand: the entitlement says it used less than was drawn.
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Entitlement._meta.db_table} SET tokens_used = 99999 WHERE id = %s",
            [bought.id],
        )
    before = _balances(buyer, seller)
    expected = f"entitlement {bought.id} has draws of 100000 tokens but only 99999 used"
    assert ledger_check() == [expected]
    with pytest.raises(SettlementRunFailed):
        settle(moment)
    run = SettlementRun.objects.get()
    assert run.status == SettlementRun.Status.FAILED and run.problems == expected
    assert _balances(buyer, seller) == before
