"""An operator resolves a discrepancy from the settlement console, in Chromium.

The discrepancy comes from the real flow: a trade through the engine, usage reported by both
sides through usage_ingest, and a settlement run whose reconciliation holds the hour. The
operator signs in to the admin, sees it on the dashboard, resolves it from the queue with a
reason, and the dashboard then shows none open.
"""

import re

import pytest
from django.contrib.admin.models import LogEntry
from playwright.sync_api import Page, expect

from settlement.models import Discrepancy, SettlementAudit
from tests.accounts.factories import UserFactory
from tests.settlement import usage_setup
from tests.settlement.settlement_setup import report, settle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # One Chromium at a time on a small machine: the browser tests share one xdist worker.
    pytest.mark.xdist_group("browser"),
]

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

PASSWORD = "amber-quartz-ledger-81"


@pytest.fixture
def held(buyer, seller, market, buy):
    """100,000 tokens on the primary meter and 80,000 by the buyer, past 2 %: the hour is held."""
    from django.utils import timezone

    buy(lots=2)
    moment = timezone.now()
    market.reconcile_tolerance_bp = 200
    market.reconcile_floor_tokens = 0
    market.save()
    report(seller, buyer.org, market, tokens=100_000, at=moment)
    report(buyer, seller.org, market, tokens=80_000, at=moment)
    settle(moment)
    return Discrepancy.objects.get()


@pytest.fixture
def operator(db):
    user = UserFactory(email="console-ops@exchange.test", is_staff=True, is_superuser=True)
    user.set_password(PASSWORD)
    user.save()
    return user


def _sign_in(page: Page, user) -> None:
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.locator("#id_username").fill(user.email)
    page.locator("#id_password").fill(PASSWORD)
    page.locator("input[type=submit]").click()
    expect(page.locator("#settlement-console-link")).to_be_visible()


def test_an_operator_resolves_a_discrepancy_from_the_console(browser_page: Page, held, operator):
    page = browser_page
    _sign_in(page, operator)

    page.locator("#settlement-console-link").get_by_role("link", name="Dashboard").click()
    expect(page).to_have_url(re.compile(r"/admin/settlement/dashboard/$"))
    expect(page.get_by_test_id("open-discrepancies-count")).to_have_text("1")

    page.get_by_test_id("open-discrepancies").get_by_role("link", name="Open the queue").click()
    expect(page).to_have_url(re.compile(r"/admin/settlement/discrepancy/\?status__exact=open$"))
    row = page.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    row.get_by_role("link", name="Resolve").click()

    expect(page.get_by_role("heading", name=f"Resolve discrepancy #{held.pk}")).to_be_visible()
    page.get_by_label("Accept the primary meter").check()
    page.get_by_label("Reason").fill("Provider logs match the relay; the buyer under-counted.")
    page.get_by_role("button", name="Resolve").click()

    expect(page).to_have_url(re.compile(r"/admin/settlement/discrepancy/$"))
    expect(page.locator(".messagelist")).to_contain_text("resolved.")
    page.goto("/admin/settlement/dashboard/")
    expect(page.get_by_test_id("open-discrepancies-count")).to_have_text("0")
    expect(page.get_by_test_id("recent-actions")).to_contain_text("Resolved: accept_primary.")

    held.refresh_from_db()
    assert (held.status, held.resolution, held.resolved_tokens) == (
        "resolved",
        "accept_primary",
        100_000,
    )
    assert held.resolved_by == operator
    assert held.reason == "Provider logs match the relay; the buyer under-counted."
    audit = SettlementAudit.objects.get(discrepancy=held)
    assert (audit.actor, audit.action) == (operator, SettlementAudit.Action.DISCREPANCY_RESOLVED)
    assert audit.reason == held.reason
    assert audit.details["resolution"] == "accept_primary"
    assert LogEntry.objects.get(object_id=str(held.pk)).user == operator
