"""The settlement console: the dashboard's figures, who may see it, and resolving from the queue.

The figures are set up through the real flows (a trade through the engine, usage through
usage_ingest, a settlement run that holds a disputed hour, a payout retried by payout_retry) and
checked against sums worked out by hand from the market's terms: $5.00 per 1M billable tokens,
a 25 bp taker fee paid by the buyer at the trade, a 10 bp maker fee taken from the provider.
"""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from settlement.console import DASHBOARD_PERMISSIONS, console_dashboard
from settlement.models import (
    Discrepancy,
    LedgerAccount,
    LedgerTransaction,
    Payout,
    PayoutAccount,
    SettlementAudit,
    SettlementRun,
    StatementLine,
)
from settlement.services import ledger_post, org_account, payout_retry, platform_account, transfer
from tests.accounts.factories import UserFactory
from tests.settlement import usage_setup
from tests.settlement.settlement_setup import hour_of, report, settle

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

pytestmark = pytest.mark.django_db
Kind = LedgerAccount.Kind
DASHBOARD_URL = "/admin/settlement/dashboard/"
TAKER_FEE_MICRO = 25_000  # 25 bp of the $10.00 the buyer paid for 2 lots of 1M tokens at $5.00


def _staff_with(*perms: str):
    user = UserFactory(is_staff=True)
    codenames = [perm.split(".", 1)[1] for perm in perms]
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="settlement", codename__in=codenames)
    )
    return user


def _figure(page: str, testid: str) -> str:
    """The text of the dashboard section marked with `testid`, tags stripped."""
    match = re.search(rf'data-testid="{testid}".*?</section>', page, re.S)
    assert match, testid
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(0).split(">", 1)[1]).split())


def _earn(org_id: int, amount_micro: int) -> None:
    with transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                platform_account(kind=Kind.STRIPE_CLEARING),
                org_account(org_id=org_id, kind=Kind.EARNED),
                amount_micro,
            ),
            reference=f"test-earnings:{org_id}",
        )


def _failed_payout(org, *, amount_micro: int, key: str) -> Payout:
    return Payout.objects.create(
        org=org,
        stripe_account_id="acct_console_1",
        amount_micro=amount_micro,
        status=Payout.Status.FAILED,
        failure_reason="The destination account was closed.",
        idempotency_key=key,
        request_fingerprint=key,
        failed_at=timezone.now(),
    )


@pytest.fixture
def moment(buy):
    """2 lots (2M tokens) bought at $5.00 per 1M: $10.00 in escrow; usage ends a second later."""
    buy(lots=2)
    return timezone.now()


@pytest.fixture
def held(buyer, seller, market, moment):
    """100,000 tokens on the primary meter, 80,000 by the buyer: past 2 %, so the hour is held."""
    market.reconcile_tolerance_bp = 200
    market.reconcile_floor_tokens = 0
    market.save()
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    report(buyer, seller.org, market, tokens=80_000, at=moment)
    settle(moment)
    return Discrepancy.objects.get()


@pytest.fixture
def payouts(seller, django_capture_on_commit_callbacks):
    """$100.00 earned; two payouts failed ($40.00 and $15.00); the first is sent again."""
    PayoutAccount.objects.create(
        org=seller.org,
        stripe_account_id="acct_console_1",
        onboarding_status=PayoutAccount.Onboarding.ENABLED,
    )
    _earn(seller.org.id, 100_000_000)
    first = _failed_payout(seller.org, amount_micro=40_000_000, key="console-1")
    second = _failed_payout(seller.org, amount_micro=15_000_000, key="console-2")
    staff = UserFactory(is_staff=True)
    with django_capture_on_commit_callbacks(execute=False):  # not sent: it stays pending
        payout_retry(payout_id=first.id, actor=staff)
    return first, second


# The figures


def test_the_dashboard_sums_what_was_set_up(held, payouts, market, moment):
    dashboard = console_dashboard()

    assert dashboard.escrow_outstanding_micro == 10_000_000  # the hour is held: nothing delivered
    # The retry moved $40.00 from earned to payout_pending; both are still owed to the provider.
    assert (dashboard.earned_micro, dashboard.payout_pending_micro) == (60_000_000, 40_000_000)
    assert dashboard.earned_unpaid_micro == 100_000_000
    assert dashboard.fees_total_micro == TAKER_FEE_MICRO
    assert len(dashboard.fees_by_day) == 14
    assert dashboard.fees_by_day[-1].day == timezone.now().date()
    assert dashboard.fees_by_day[-1].fees_micro == TAKER_FEE_MICRO
    assert [usage.symbol for usage in dashboard.usage_by_market] == [market.symbol]
    usage = dashboard.usage_by_market[0]
    # Only the provider's record is the primary meter; the buyer's report only checks it.
    assert (usage.requests, usage.billable_tokens, usage.entitlement_tokens) == (
        1,
        100_000,
        100_000,
    )
    assert (usage.payg_tokens, usage.payg_cost_micro, usage.unfunded_micro) == (0, 0, 0)
    assert dashboard.open_discrepancies == 1
    assert dashboard.oldest_open_discrepancy_hour == hour_of(moment)
    assert (dashboard.failed_payouts, dashboard.failed_payouts_micro) == (2, 55_000_000)
    assert dashboard.failed_payouts_waiting == 1
    first, second = payouts
    assert {(p.id, p.is_sent_again) for p in dashboard.recent_failed_payouts} == {
        (first.id, True),
        (second.id, False),
    }
    (run,) = dashboard.runs
    assert run.period_start == hour_of(moment)
    assert (run.status, run.is_check_passed, run.pair_hours_held) == ("succeeded", True, 1)
    assert run.tokens_settled == 0


def test_the_dashboard_page_shows_the_figures_in_dollars(client, staff, held, payouts, market):
    client.force_login(staff)

    response = client.get(DASHBOARD_URL)

    assert response.status_code == 200
    page = response.content.decode()
    assert "$10.00" in _figure(page, "escrow-outstanding")
    assert "$100.00" in _figure(page, "earned-unpaid")
    assert "$60.00 earned, $40.00 in payouts" in _figure(page, "earned-unpaid")
    assert "$0.025" in _figure(page, "fees-total")
    assert _figure(page, "open-discrepancies").startswith("Open discrepancies 1 ")
    assert "of 2 failed ($55.00)" in _figure(page, "failed-payouts")
    assert f'data-market="{market.symbol}"' in page
    assert "100,000" in page
    assert "Passed" in page
    assert reverse("admin:settlement_discrepancy_changelist") + "?status__exact=open" in page
    run = SettlementRun.objects.get()
    assert f"{reverse('admin:settlement_statementline_changelist')}?run__id__exact={run.id}" in page


def test_fees_are_grouped_by_utc_day_over_the_last_fourteen(held):
    today = timezone.now().date()

    three_days_on = console_dashboard(now=timezone.now() + timedelta(days=3))
    fortnight_on = console_dashboard(now=timezone.now() + timedelta(days=14))

    by_day = {day.day: day.fees_micro for day in three_days_on.fees_by_day}
    assert by_day[today] == TAKER_FEE_MICRO
    assert sum(by_day.values()) == TAKER_FEE_MICRO
    assert three_days_on.fees_by_day[-4].day == today
    assert three_days_on.fees_by_day[-4].bar_percent == 100
    assert fortnight_on.fees_total_micro == 0  # the trade's day is past the window


def test_usage_older_than_a_day_is_left_out(held):
    assert console_dashboard(now=timezone.now() + timedelta(hours=25)).usage_by_market == []


def test_a_failed_run_shows_its_ledger_check_problems(client, staff):
    start = hour_of(timezone.now()) - timedelta(hours=5)
    SettlementRun.objects.create(
        period_start=start,
        period_end=start + timedelta(hours=1),
        status=SettlementRun.Status.FAILED,
        problems="escrow of org 7 is 5 micro-USD off its entitlements\nsecond problem",
        finished_at=timezone.now(),
    )
    client.force_login(staff)

    page = client.get(DASHBOARD_URL).content.decode()

    (run,) = console_dashboard().runs
    assert not run.is_check_passed
    assert run.problems == ["escrow of org 7 is 5 micro-USD off its entitlements", "second problem"]
    assert "2 problems:" in page
    assert "escrow of org 7 is 5 micro-USD off its entitlements" in page


def test_an_empty_exchange_shows_zeros(client, staff):
    client.force_login(staff)

    page = client.get(DASHBOARD_URL).content.decode()

    assert "$0.00" in _figure(page, "escrow-outstanding")
    assert _figure(page, "open-discrepancies").startswith("Open discrepancies 0 ")
    assert "No settlement has run yet." in page
    assert "No metered usage in the last 24 hours." in page


# Who may see it


def test_a_user_who_is_not_staff_is_sent_to_the_login(client):
    client.force_login(UserFactory())

    response = client.get(DASHBOARD_URL)

    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")


def test_a_visitor_who_is_not_signed_in_is_sent_to_the_login(client):
    response = client.get(DASHBOARD_URL)

    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")


def test_staff_without_the_view_permissions_are_refused(client):
    client.force_login(_staff_with(*DASHBOARD_PERMISSIONS[:-1]))

    assert client.get(DASHBOARD_URL).status_code == 403
    assert DASHBOARD_URL not in client.get(reverse("admin:index")).content.decode()


def test_staff_with_the_view_permissions_see_it_and_the_link(client):
    client.force_login(_staff_with(*DASHBOARD_PERMISSIONS))

    assert client.get(DASHBOARD_URL).status_code == 200
    assert DASHBOARD_URL in client.get(reverse("admin:index")).content.decode()
    assert DASHBOARD_URL in client.get("/admin/settlement/").content.decode()


# Resolving from the queue


def _resolve_url(discrepancy) -> str:
    return reverse("admin:settlement_discrepancy_resolve", args=[discrepancy.pk])


def _resolve(client, discrepancy, **data):
    form = {"resolution": "accept_primary", "tokens": "", "reason": "Matched the request logs."}
    return client.post(_resolve_url(discrepancy), {**form, **data})


def test_staff_without_the_change_permission_cannot_resolve(client, held):
    client.force_login(_staff_with("settlement.view_discrepancy"))

    queue = client.get(reverse("admin:settlement_discrepancy_changelist"))
    form = client.get(_resolve_url(held))
    post = _resolve(client, held)

    assert queue.status_code == 200
    assert (form.status_code, post.status_code) == (403, 403)
    held.refresh_from_db()
    assert held.is_open and held.resolved_by is None
    assert not SettlementAudit.objects.filter(discrepancy=held).exists()
    assert console_dashboard().open_discrepancies == 1


def test_staff_with_the_permission_resolve_and_the_dashboard_shows_none_open(client, held):
    user = _staff_with(*DASHBOARD_PERMISSIONS, "settlement.change_discrepancy")
    client.force_login(user)

    response = _resolve(client, held, resolution="stated", tokens="90000", reason="Split it.")

    assert response.status_code == 302
    assert response.url == reverse("admin:settlement_discrepancy_changelist")
    held.refresh_from_db()
    assert (held.status, held.resolution, held.resolved_tokens) == ("resolved", "stated", 90_000)
    assert (held.resolved_by, held.reason) == (user, "Split it.")
    audit = SettlementAudit.objects.get(discrepancy=held)
    assert (audit.actor, audit.action, audit.reason) == (user, "discrepancy_resolved", "Split it.")
    log = LogEntry.objects.get(object_id=str(held.pk))
    assert (log.user, log.action_flag) == (user, CHANGE)
    assert "Resolved: stated. Split it." in log.get_change_message()
    page = client.get(DASHBOARD_URL).content.decode()
    assert _figure(page, "open-discrepancies").startswith("Open discrepancies 0 ")
    assert "Resolved: stated. Split it." in page  # the recent staff actions


def test_a_resolution_without_a_reason_is_refused(client, staff, held):
    client.force_login(staff)

    response = _resolve(client, held, reason="  ")

    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    held.refresh_from_db()
    assert held.is_open


def test_the_queue_lists_open_discrepancies_first(client, staff, held, buyer, seller, market):
    older = Discrepancy.objects.create(
        buyer_org=buyer.org,
        provider_org=seller.org,
        market=market,
        hour=held.hour - timedelta(hours=3),
        primary_tokens=10,
        other_tokens=50,
        source=Discrepancy.Source.BUYER,
        status=Discrepancy.Status.RESOLVED,
        resolution=Discrepancy.Resolution.ACCEPT_PRIMARY,
        resolved_tokens=10,
        reason="Earlier.",
        resolved_by=staff,
        resolved_at=timezone.now(),
    )
    client.force_login(staff)

    response = client.get(reverse("admin:settlement_discrepancy_changelist"))

    listed = list(response.context["cl"].result_list)
    assert listed == [held, older]


# The run's detail page and the audit


def test_a_run_page_links_to_its_per_org_statement_lines(client, staff, held):
    run = SettlementRun.objects.get()
    lines = StatementLine.objects.filter(run=run).count()
    client.force_login(staff)

    page = client.get(reverse("admin:settlement_settlementrun_change", args=[run.pk]))
    listed = client.get(
        reverse("admin:settlement_statementline_changelist"), {"run__id__exact": run.pk}
    )

    assert lines > 0
    assert f"{lines} per-org statement lines" in page.content.decode()
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == lines


def test_the_settlement_audit_is_listed_read_only(client, staff, held):
    from settlement.services import discrepancy_resolve

    discrepancy_resolve(
        actor=staff, discrepancy_id=held.id, resolution="accept_primary", reason="Logs agree."
    )
    client.force_login(staff)

    listing = client.get(reverse("admin:settlement_settlementaudit_changelist"))

    assert listing.status_code == 200
    assert "Logs agree." in listing.content.decode()
    assert client.get(reverse("admin:settlement_settlementaudit_add")).status_code == 403
