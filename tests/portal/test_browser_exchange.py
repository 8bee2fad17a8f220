"""The trading story in Chromium: a provider asks, a buyer bids, a real Celery worker matches them.

Everything past the browser is real: the ticket posts to the live server, order_place queues the
market's match task on commit, a Celery worker process (tests.celery_worker) on the same
PostgreSQL test database runs the engine, and both members' pages, polling with HTMX, show the
trade; the buyer's shows the entitlement it bought.
"""

import re

import pytest
from playwright.sync_api import Browser, Page, expect

from accounts.models import Role
from marketplace.models import Order, Trade
from settlement.models import Entitlement, LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.accounts.factories import MembershipFactory, OrgFactory
from tests.browser import BROWSER_TIMEOUT_MS
from tests.celery_worker import (  # noqa: F401 - fixtures
    celery_broker,
    celery_worker,
    celery_worker_env,
)
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    # One Chromium at a time on a small machine: the browser tests share one xdist worker.
    pytest.mark.xdist_group("browser"),
]

PASSWORD = "correct horse battery"  # the factories' password
FUNDS = 200_000_000  # $200
# The worker picks the task up from a filesystem broker and matches; allow for a busy machine.
MATCH_TIMEOUT_MS = 30_000


@pytest.fixture
def market():
    return MarketFactory(symbol="FRONTIER-EU")


@pytest.fixture
def seller_member(market):
    org = OrgFactory(name="Fast Inference", is_buyer=False, is_provider=True)
    ProviderEndpointFactory(org=org, market=market)  # verified: 50 lots over 10 days
    return MembershipFactory(org=org, role=Role.TRADER, user__email="seller@example.test")


@pytest.fixture
def buyer_member(fund):
    membership = MembershipFactory(
        org__name="Acme Agents", role=Role.TRADER, user__email="buyer@example.test"
    )
    fund(membership.org_id, FUNDS)  # as a verified card top-up credits it
    return membership


@pytest.fixture
def second_page(chromium: Browser, live_server):
    """Another member's browser, with its own cookies, beside `browser_page`."""
    context = chromium.new_context(base_url=live_server.url)
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def _log_in(page: Page, email: str) -> None:
    page.goto("/login/")
    page.locator("input[name=username]").fill(email)
    page.locator("input[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Balance & ledger")).to_be_visible()


def _open_market(page: Page) -> None:
    page.get_by_role("link", name="Markets", exact=True).click()
    expect(page).to_have_url(re.compile(r"/markets/$"))
    page.get_by_role("link", name="FRONTIER-EU").click()
    expect(page.get_by_role("heading", name="FRONTIER-EU")).to_be_visible()


def _fill_ticket(page: Page, *, side: str, price: str, lots: str) -> None:
    page.get_by_label(side).check()
    page.get_by_label("Price (USD per 1M tokens)").fill(price)
    page.get_by_label("Lots", exact=True).fill(lots)


def test_an_ask_and_a_bid_placed_in_the_portal_trade_through_the_worker(
    browser_page: Page,
    second_page: Page,
    celery_worker,  # noqa: F811 - the fixture imported above
    market,
    seller_member,
    buyer_member,
):
    seller_page, buyer_page = browser_page, second_page

    # The provider posts an ask of 10 lots at $5.00; the worker rests it on the book.
    _log_in(seller_page, "seller@example.test")
    _open_market(seller_page)
    _fill_ticket(seller_page, side="Sell (ask)", price="5.00", lots="10")
    expect(seller_page.get_by_test_id("preview-hold")).to_contain_text("$0.00")
    seller_page.get_by_role("button", name="Place order").click()
    expect(seller_page.get_by_role("status").filter(has_text="is placed")).to_be_visible()
    ask = Order.objects.get(side=Order.Side.SELL)
    ask_row = seller_page.locator(f'[data-testid="open-orders"] tr[data-order="{ask.id}"]')
    expect(ask_row.locator("[data-status]")).to_have_attribute(
        "data-status", "open", timeout=MATCH_TIMEOUT_MS
    )

    # The buyer sees it in the preview, then bids 4 lots at $5.00.
    _log_in(buyer_page, "buyer@example.test")
    _open_market(buyer_page)
    expect(buyer_page.get_by_test_id("ticker")).to_contain_text("$5.00")  # the best ask
    _fill_ticket(buyer_page, side="Buy (bid)", price="5.00", lots="4")
    expect(buyer_page.get_by_test_id("preview-fill")).to_contain_text("4 lots at $5.00")
    expect(buyer_page.get_by_test_id("preview-hold")).to_contain_text("$20.05")
    buyer_page.get_by_role("button", name="Place order").click()
    expect(buyer_page.get_by_role("status").filter(has_text="is placed")).to_be_visible()

    # The worker matches them; the buyer's page shows the trade and the tokens it bought.
    buyer_trades = buyer_page.get_by_test_id("my-trades")
    expect(buyer_trades.locator("tbody tr")).to_have_count(1, timeout=MATCH_TIMEOUT_MS)
    expect(buyer_trades).to_contain_text("Bought")
    expect(buyer_trades).to_contain_text("$5.00")
    entitlements = buyer_page.get_by_test_id("my-entitlements")
    expect(entitlements.locator("tbody tr")).to_have_count(1)
    expect(entitlements).to_contain_text("4,000,000")
    expect(buyer_page.get_by_test_id("open-orders")).to_have_count(0)  # the bid is filled

    # The provider's page, polling, shows the sale and what is left of the ask.
    seller_trades = seller_page.get_by_test_id("my-trades")
    expect(seller_trades).to_contain_text("Sold", timeout=MATCH_TIMEOUT_MS)
    expect(ask_row.locator("td").nth(5)).to_have_text("4")  # filled lots
    expect(seller_page.get_by_test_id("sold-entitlements")).to_contain_text("4,000,000")

    trade = Trade.objects.get()
    assert (trade.buyer_org_id, trade.seller_org_id) == (buyer_member.org_id, seller_member.org_id)
    assert (trade.price_micro, trade.lots, trade.maker_order_id) == (5_000_000, 4, ask.id)
    entitlement = Entitlement.objects.get()
    assert (entitlement.trade_id, entitlement.tokens_bought) == (trade.id, 4_000_000)
    assert account_balance(org_id=buyer_member.org_id, kind=LedgerAccount.Kind.ESCROW) == 20_000_000
    assert account_balance(org_id=buyer_member.org_id, kind=LedgerAccount.Kind.HELD) == 0
    assert ledger_check() == []
    # The worker process matched them, not this one: tasks are sent, never run inline, here.
    assert "market_match_task" in celery_worker.output()
    assert "succeeded" in celery_worker.output()
