"""A new buyer signs up and tops up with a test card, in Chromium, against localstripe.

Everything is real from the browser to Stripe's (local) API and back: the page submits the form,
the server calls localstripe, localstripe posts the signed webhook to the live server, and the
status panel (HTMX, polling every second) shows the credit.
"""

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from settlement.models import LedgerEntry, TopUp
from settlement.services import ledger_check

pytestmark = [
    pytest.mark.browser,
    pytest.mark.localstripe,
    pytest.mark.django_db(transaction=True),
    # One Chromium at a time on a small machine: the browser tests share one xdist worker.
    pytest.mark.xdist_group("browser"),
]

# localstripe sends its webhook about a second after the payment; allow for a busy machine.
PAYMENT_TIMEOUT_MS = 15_000


def _sign_up_as_buyer(page: Page) -> str:
    email = f"buyer-{uuid.uuid4().hex[:8]}@example.test"
    page.goto("/signup/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill("plum-orbit-canvas-42")
    page.get_by_label("Password again").fill("plum-orbit-canvas-42")
    page.get_by_label("Organisation name").fill("Browser Buyer")
    expect(page.get_by_label("We buy tokens")).to_be_checked()
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Balance & ledger")).to_be_visible()
    return email


def _top_up(page: Page, *, amount: str, card: str) -> None:
    page.get_by_role("link", name="Top up", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/topups/new/$"))
    page.get_by_label("Amount (USD)").fill(amount)
    page.get_by_label(card).check()
    page.get_by_role("button", name="Pay").click()
    expect(page).to_have_url(re.compile(r"/topups/\d+/$"))


def test_visa_topup_is_credited_and_shows_on_the_dashboard(browser_page: Page, localstripe):
    page = browser_page
    _sign_up_as_buyer(page)

    _top_up(page, amount="50.00", card="Visa 4242 — succeeds")

    status = page.locator("#topup-status [data-status]")
    expect(status).to_have_attribute("data-status", "succeeded", timeout=PAYMENT_TIMEOUT_MS)
    expect(page.get_by_test_id("available-balance")).to_have_text("$50.00")

    page.get_by_role("link", name="Balance & ledger").click()
    expect(page.get_by_test_id("balance-available").locator(".figure")).to_have_text("$50.00")
    topup_row = page.locator("table.ledger tbody tr", has_text="Card top-up")
    expect(topup_row).to_have_count(1)
    expect(topup_row).to_contain_text("+$50.00")

    topup = TopUp.objects.get()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert LedgerEntry.objects.filter(account__org_id=topup.org_id).count() == 1
    assert ledger_check() == []


def test_declined_card_shows_the_failure_and_no_money(browser_page: Page, localstripe):
    page = browser_page
    _sign_up_as_buyer(page)

    _top_up(page, amount="50.00", card="Card that is declined")

    status = page.locator("#topup-status [data-status]")
    expect(status).to_have_attribute("data-status", "failed", timeout=PAYMENT_TIMEOUT_MS)
    expect(page.locator("#topup-status [role=alert]")).to_contain_text("Nothing was charged.")
    expect(page.get_by_test_id("available-balance")).to_have_text("$0.00")

    page.get_by_role("link", name="Balance & ledger").click()
    expect(page.get_by_test_id("balance-available").locator(".figure")).to_have_text("$0.00")
    expect(page.locator("table.ledger")).to_have_count(0)

    assert TopUp.objects.get().status == TopUp.Status.FAILED
    assert not LedgerEntry.objects.filter(account__org__isnull=False).exists()
    assert ledger_check() == []
