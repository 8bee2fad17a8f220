"""The exchange pages: markets, a market's page and ticket, cancel, chart data, endpoints.

The market (MarketFactory) trades lots of 1M tokens at $4.00-$6.00 on a $0.01 tick, 2 to 100 lots,
maker fee 10 bp, taker 25 bp. Orders placed here stay pending (on-commit callbacks, which queue
the match, do not run inside a test's transaction) unless a test runs the engine itself.
"""

import uuid

import pytest

from accounts.models import Role
from accounts.principal import Principal
from marketplace.engine import market_match
from marketplace.models import Order, ProviderEndpoint
from marketplace.services import order_place
from settlement.models import Entitlement, Hold, LedgerAccount, LedgerEntry
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.accounts.factories import MembershipFactory, OrgFactory
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory

pytestmark = pytest.mark.django_db

Kind = LedgerAccount.Kind
FUNDS = 1_000_000_000  # $1,000
BID_10_AT_5_HOLD = 50_000_000 + 125_000  # notional + the higher fee (25 bp), rounded up


@pytest.fixture
def market():
    return MarketFactory(symbol="FRONTIER-EU")


@pytest.fixture
def buyer_client(member_client, fund):
    client, membership = member_client(role=Role.TRADER)
    fund(membership.org_id, FUNDS)
    return client, membership


@pytest.fixture
def provider_org(market):
    org = OrgFactory(name="Fast Inference", is_buyer=False, is_provider=True)
    ProviderEndpointFactory(org=org, market=market)  # verified: 50 lots over the delivery window
    return org


def _ticket(**fields) -> dict:
    data = {
        "side": "buy",
        "type": "limit",
        "price": "5.00",
        "lots": "10",
        "tif": "",
        "idempotency_key": str(uuid.uuid4()),
    }
    data.update(fields)
    return data


def _balances(org_id: int) -> tuple[int, int]:
    return (
        account_balance(org_id=org_id, kind=Kind.AVAILABLE),
        account_balance(org_id=org_id, kind=Kind.HELD),
    )


def _ask(provider_org, market, *, price_micro=5_000_000, lots=10) -> Order:
    owner = MembershipFactory(org=provider_org, role=Role.OWNER)
    return order_place(
        principal=Principal.for_membership(owner),
        market_id=market.id,
        side="sell",
        price_micro=price_micro,
        lots=lots,
    )


# Pages render for each kind of member


@pytest.mark.parametrize(
    ("role", "is_provider", "sees_ticket"),
    [
        (Role.TRADER, False, True),
        (Role.OWNER, True, True),
        (Role.VIEWER, False, False),
    ],
)
def test_market_pages_render_for_buyer_provider_and_viewer(
    member_client, market, role, is_provider, sees_ticket
):
    org = OrgFactory(is_buyer=not is_provider, is_provider=is_provider)
    client, _ = member_client(role=role, org=org)

    listing = client.get("/markets/")
    page = client.get("/markets/FRONTIER-EU/")

    assert listing.status_code == 200
    assert 'href="/markets/FRONTIER-EU/"' in listing.content.decode()
    assert page.status_code == 200
    html = page.content.decode()
    assert "Contract" in html and 'id="price-chart"' in html and 'id="depth-chart"' in html
    assert ("Place order" in html) is sees_ticket
    assert ("can see this market but not trade" in html) is not sees_ticket
    assert ('href="/endpoints/"' in html) is is_provider


def test_markets_list_shows_last_price_volume_and_best_prices(buyer_client, market, provider_org):
    client, _ = buyer_client
    _ask(provider_org, market, price_micro=5_100_000, lots=4)
    market_match(market_id=market.id)
    client.post("/markets/FRONTIER-EU/orders/", _ticket(price="5.10", lots="3"))
    market_match(market_id=market.id)  # the bid takes 3 of the 4 lots at $5.10
    client.post("/markets/FRONTIER-EU/orders/", _ticket(price="4.90", lots="2"))
    market_match(market_id=market.id)  # rests as the best bid

    html = client.get("/markets/").content.decode()

    row = html[html.index('data-market="FRONTIER-EU"') :].split("</tr>")[0]
    assert "$5.10" in row  # last, and the best ask (1 lot left)
    assert "+0.00%" in row
    assert ">3<" in row  # 24h volume in lots
    assert "$4.90" in row


def test_unknown_market_is_404(buyer_client):
    client, _ = buyer_client
    assert client.get("/markets/NOPE-XX/").status_code == 404


# The ticket


def test_ticket_places_a_bid_and_holds_its_collateral(buyer_client, market):
    client, membership = buyer_client

    response = client.post("/markets/FRONTIER-EU/orders/", _ticket())

    assert response.status_code == 302
    order = Order.objects.get()
    assert (order.org_id, order.side, order.type, order.tif) == (
        membership.org_id,
        "buy",
        "limit",
        "GTC",
    )
    assert (order.price_micro, order.lots, order.status) == (5_000_000, 10, Order.Status.PENDING)
    assert order.created_by == membership.user
    hold = Hold.objects.get(reference=order.hold_reference)
    assert hold.amount_micro == order.hold_micro == BID_10_AT_5_HOLD
    assert _balances(membership.org_id) == (FUNDS - BID_10_AT_5_HOLD, BID_10_AT_5_HOLD)
    assert ledger_check() == []
    page = client.get(response["Location"]).content.decode()
    assert f"Bid #{order.id} for 10 lots at $5.00 is placed." in page
    assert f'data-order="{order.id}"' in page


def test_resubmitting_the_same_ticket_places_one_order(buyer_client, market):
    client, _ = buyer_client
    ticket = _ticket()

    client.post("/markets/FRONTIER-EU/orders/", ticket)
    client.post("/markets/FRONTIER-EU/orders/", ticket)

    assert Order.objects.count() == 1


def test_provider_posts_an_ask_from_the_ticket(member_client, market, provider_org):
    client, _ = member_client(role=Role.TRADER, org=provider_org)

    client.post("/markets/FRONTIER-EU/orders/", _ticket(side="sell", price="5.20", lots="5"))

    ask = Order.objects.get()
    assert (ask.side, ask.price_micro, ask.lots, ask.hold_micro) == ("sell", 5_200_000, 5, 0)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"price": "5.005"}, "price", "A multiple of 0.010000."),
        ({"price": "7.00"}, "price", "Between 4.000000 and 6.000000."),
        ({"price": "five"}, "price", "Enter a price in US dollars, such as 5.00."),
        ({"price": ""}, "price", "A limit order needs a price."),
        ({"lots": "1"}, "lots", "At least 2."),
        ({"lots": "101"}, "lots", "At most 100."),
        ({"lots": "lots"}, "lots", "Enter a whole number."),
        ({"type": "market", "price": "", "tif": "GTC"}, "tif", "A market order is IOC or FOK."),
        ({"tif": "IOC", "post_only": "on"}, "post_only", "Only for GTC limit orders."),
    ],
)
def test_bad_ticket_shows_the_field_error_and_writes_nothing(
    buyer_client, market, fields, field, message
):
    client, membership = buyer_client
    entries_before = LedgerEntry.objects.count()

    response = client.post("/markets/FRONTIER-EU/orders/", _ticket(**fields))

    assert response.status_code == 200
    form = response.context["form"]
    assert form.errors[field] == [message]
    assert f'id="id_{field}_error"' in response.content.decode()
    assert not Order.objects.exists()
    assert LedgerEntry.objects.count() == entries_before
    assert _balances(membership.org_id) == (FUNDS, 0)


def test_a_bid_beyond_the_funds_is_refused_on_the_form(member_client, fund, market):
    client, membership = member_client(role=Role.TRADER)
    fund(membership.org_id, 10_000_000)  # $10: a bid of 10 lots at $5 needs $50.125

    response = client.post("/markets/FRONTIER-EU/orders/", _ticket())

    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert '<div class="form-errors" role="alert">' in response.content.decode()
    assert not Order.objects.exists()
    assert _balances(membership.org_id) == (10_000_000, 0)


def test_an_ask_without_capacity_is_refused_on_the_lots_field(member_client, market, provider_org):
    client, _ = member_client(role=Role.TRADER, org=provider_org)

    response = client.post("/markets/FRONTIER-EU/orders/", _ticket(side="sell", lots="51"))

    assert response.context["form"].errors["lots"] == ["At most 50 more lots."]
    assert not Order.objects.exists()


def test_viewer_cannot_place_an_order(member_client, fund, market):
    client, membership = member_client(role=Role.VIEWER)
    fund(membership.org_id, FUNDS)

    response = client.post("/markets/FRONTIER-EU/orders/", _ticket())

    assert response.status_code == 403
    assert not Order.objects.exists()
    assert _balances(membership.org_id) == (FUNDS, 0)


# The preview


def test_preview_shows_hold_fee_and_fill_and_changes_nothing(buyer_client, market, provider_org):
    client, membership = buyer_client
    ask = _ask(provider_org, market, price_micro=4_900_000, lots=4)
    market_match(market_id=market.id)
    orders_before = list(Order.objects.values_list("id", "status", "filled_lots"))
    entries_before = LedgerEntry.objects.count()

    response = client.post(
        "/markets/FRONTIER-EU/preview/", _ticket(), headers={"HX-Request": "true"}
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-testid="preview-hold">$50.125' in html
    assert "4 lots at $4.90 on average · $19.60" in html  # the resting ask, at its price
    assert 'data-testid="preview-fee">$0.049' in html  # 25 bp of $19.60
    assert "6 lots" in html  # what would rest
    assert list(Order.objects.values_list("id", "status", "filled_lots")) == orders_before
    assert LedgerEntry.objects.count() == entries_before
    assert _balances(membership.org_id) == (FUNDS, 0)
    assert Order.objects.get(pk=ask.pk).filled_lots == 0


def test_preview_lists_what_is_wrong(buyer_client, market):
    client, _ = buyer_client

    response = client.post("/markets/FRONTIER-EU/preview/", _ticket(price="5.005"))

    assert "<strong>Price (USD per 1M tokens):</strong> A multiple of 0.010000." in (
        response.content.decode()
    )
    assert not Order.objects.exists()


# Cancel


def test_cancel_releases_the_hold(buyer_client, market):
    client, membership = buyer_client
    client.post("/markets/FRONTIER-EU/orders/", _ticket())
    order = Order.objects.get()

    response = client.post(f"/orders/{order.id}/cancel/", headers={"HX-Request": "true"})

    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-order="{order.id}"' not in html
    assert f"Order #{order.id} is cancelled." in html
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert Hold.objects.get(reference=order.hold_reference).status == Hold.Status.CLOSED
    assert _balances(membership.org_id) == (FUNDS, 0)
    assert ledger_check() == []


def test_cancelling_twice_says_so_and_changes_nothing(buyer_client, market):
    client, membership = buyer_client
    client.post("/markets/FRONTIER-EU/orders/", _ticket())
    order = Order.objects.get()
    client.post(f"/orders/{order.id}/cancel/", headers={"HX-Request": "true"})
    entries_before = LedgerEntry.objects.count()

    response = client.post(f"/orders/{order.id}/cancel/", headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert "The order is cancelled." in response.content.decode()
    assert LedgerEntry.objects.count() == entries_before
    assert _balances(membership.org_id) == (FUNDS, 0)


def test_cancel_without_htmx_goes_back_to_the_market(buyer_client, market):
    client, _ = buyer_client
    client.post("/markets/FRONTIER-EU/orders/", _ticket())
    order = Order.objects.get()

    response = client.post(f"/orders/{order.id}/cancel/")

    assert response.status_code == 302
    assert response["Location"] == "/markets/FRONTIER-EU/"
    assert Order.objects.get().status == Order.Status.CANCELLED


def test_other_orgs_orders_cannot_be_cancelled(buyer_client, member_client, fund, market):
    owner_client, _ = buyer_client
    owner_client.post("/markets/FRONTIER-EU/orders/", _ticket())
    order = Order.objects.get()
    stranger, _ = member_client(role=Role.OWNER)

    response = stranger.post(f"/orders/{order.id}/cancel/")

    assert response.status_code == 404
    assert Order.objects.get().status == Order.Status.PENDING
    assert Hold.objects.get(reference=order.hold_reference).status == Hold.Status.OPEN


def test_viewer_cannot_cancel(buyer_client, member_client, market):
    trader_client, membership = buyer_client
    trader_client.post("/markets/FRONTIER-EU/orders/", _ticket())
    order = Order.objects.get()
    viewer, _ = member_client(role=Role.VIEWER, org=membership.org)

    response = viewer.post(f"/orders/{order.id}/cancel/")

    assert response.status_code == 403
    assert Order.objects.get().status == Order.Status.PENDING


# After a match: trades, entitlements, chart data


def test_both_sides_see_the_trade_and_the_buyer_the_entitlement(
    buyer_client, member_client, market, provider_org
):
    client, membership = buyer_client
    _ask(provider_org, market, price_micro=5_000_000, lots=10)
    market_match(market_id=market.id)
    client.post("/markets/FRONTIER-EU/orders/", _ticket(lots="4"))
    market_match(market_id=market.id)
    provider_client, _ = member_client(role=Role.VIEWER, org=provider_org)

    buyer_html = client.get("/markets/FRONTIER-EU/activity/").content.decode()
    provider_html = provider_client.get("/markets/FRONTIER-EU/activity/").content.decode()

    entitlement = Entitlement.objects.get()
    assert entitlement.buyer_org_id == membership.org_id
    assert 'data-testid="my-trades"' in buyer_html and "Bought" in buyer_html
    assert f'data-entitlement="{entitlement.id}"' in buyer_html
    assert "4,000,000" in buyer_html  # tokens bought
    assert 'data-testid="my-trades"' in provider_html and "Sold" in provider_html
    assert 'data-testid="sold-entitlements"' in provider_html
    assert "Cancel" not in provider_html  # a viewer sees the ask but cannot cancel it


def test_chart_data_has_candles_and_the_depth_curve(buyer_client, market, provider_org):
    client, _ = buyer_client
    _ask(provider_org, market, price_micro=5_020_000, lots=5)
    _ask(provider_org, market, price_micro=5_000_000, lots=6)
    market_match(market_id=market.id)
    client.post("/markets/FRONTIER-EU/orders/", _ticket(price="5.00", lots="2"))
    client.post("/markets/FRONTIER-EU/orders/", _ticket(price="4.98", lots="3"))
    market_match(market_id=market.id)

    data = client.get("/markets/FRONTIER-EU/chart.json?interval=1m").json()

    [candle] = data["candles"]
    assert candle["open"] == candle["close"] == "5.000000"
    assert candle["volume_lots"] == 2
    assert data["depth"] == [
        {"price": "4.980000", "bid_lots": 3, "ask_lots": None},
        {"price": "4.990000", "bid_lots": None, "ask_lots": None},
        {"price": "5.000000", "bid_lots": None, "ask_lots": 4},
        {"price": "5.010000", "bid_lots": None, "ask_lots": 4},
        {"price": "5.020000", "bid_lots": None, "ask_lots": 9},
    ]


def test_chart_data_refuses_an_unknown_interval(buyer_client, market):
    client, _ = buyer_client
    assert client.get("/markets/FRONTIER-EU/chart.json?interval=7m").status_code == 400


# Provider endpoints


def _endpoint_form(market, **fields) -> dict:
    data = {
        "market": str(market.id),
        "models": "model-a, model-b",
        "base_url": "https://inference.example.test/v1",
        "capacity_tokens_per_day": "2000000",
    }
    data.update(fields)
    return data


def test_provider_registers_an_endpoint_pending_verification(member_client, market):
    org = OrgFactory(is_buyer=False, is_provider=True)
    client, _ = member_client(role=Role.TRADER, org=org)

    response = client.post("/endpoints/", _endpoint_form(market))

    assert response.status_code == 302
    endpoint = ProviderEndpoint.objects.get()
    assert (endpoint.org_id, endpoint.market_id) == (org.id, market.id)
    assert endpoint.models == ["model-a", "model-b"]
    assert endpoint.capacity_tokens_per_day == 2_000_000
    assert endpoint.status == ProviderEndpoint.Status.PENDING
    html = client.get("/endpoints/").content.decode()
    assert 'data-status="pending"' in html
    assert "2,000,000" in html  # pending capacity per day in the capacity table


def test_endpoint_errors_show_by_field_and_write_nothing(member_client, market):
    org = OrgFactory(is_buyer=False, is_provider=True)
    client, _ = member_client(role=Role.TRADER, org=org)

    bad_model = client.post("/endpoints/", _endpoint_form(market, models="gpt-9"))
    bad_url = client.post("/endpoints/", _endpoint_form(market, base_url="ftp://x"))
    no_capacity = client.post("/endpoints/", _endpoint_form(market, capacity_tokens_per_day="0"))

    assert bad_model.context["form"].errors["models"] == ["Admitted: model-a, model-b."]
    assert bad_url.context["form"].errors["base_url"] == ["An http:// or https:// URL with a host."]
    assert "capacity_tokens_per_day" in no_capacity.context["form"].errors
    assert not ProviderEndpoint.objects.exists()


def test_capacity_table_counts_open_asks_and_sold_tokens(
    buyer_client, member_client, market, provider_org
):
    buyer, _ = buyer_client
    _ask(provider_org, market, price_micro=5_000_000, lots=10)
    market_match(market_id=market.id)
    buyer.post("/markets/FRONTIER-EU/orders/", _ticket(lots="4"))
    market_match(market_id=market.id)
    client, _ = member_client(role=Role.VIEWER, org=provider_org)

    response = client.get("/endpoints/")

    [row] = response.context["capacities"]
    assert row.capacity_tokens == 50_000_000
    assert row.open_ask_tokens == 6_000_000
    assert row.sold_undelivered_tokens == 4_000_000
    assert row.room_lots == 40
    assert response.context["form"] is None  # a viewer sees, but does not register


def test_viewer_cannot_register_an_endpoint(member_client, market):
    org = OrgFactory(is_buyer=False, is_provider=True)
    client, _ = member_client(role=Role.VIEWER, org=org)

    response = client.post("/endpoints/", _endpoint_form(market))

    assert response.status_code == 403
    assert not ProviderEndpoint.objects.exists()


def test_buyer_only_orgs_have_no_endpoints_page(buyer_client):
    client, _ = buyer_client
    assert client.get("/endpoints/").status_code == 403
