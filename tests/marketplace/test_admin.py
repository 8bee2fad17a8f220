"""The marketplace admin: market and endpoint actions call the services; history is read-only."""

import pytest
from django.urls import reverse

from marketplace.models import Market, ModelTier, Order, ProviderEndpoint, Region, Trade
from tests.marketplace.factories import ProviderEndpointFactory


@pytest.fixture
def admin(client, staff):
    client.force_login(staff)
    return client


def run_action(admin, model, action: str, ids: list[int]):
    url = reverse(f"admin:marketplace_{model._meta.model_name}_changelist")
    return admin.post(url, {"action": action, "_selected_action": ids}, follow=True)


def test_staff_halt_and_resume_a_market_from_the_admin(admin, market):
    run_action(admin, Market, "halt", [market.id])
    assert Market.objects.get(pk=market.pk).status == Market.Status.HALTED

    run_action(admin, Market, "resume", [market.id])
    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN


def test_a_refused_market_action_is_reported_not_raised(admin, market):
    response = run_action(admin, Market, "resume", [market.id])  # it is not halted

    assert response.status_code == 200
    assert "cannot become open" in response.content.decode()
    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN


def test_staff_verify_and_suspend_endpoints_from_the_admin(admin, staff, provider, market):
    endpoint = ProviderEndpointFactory(
        org=provider.org, market=market, status=ProviderEndpoint.Status.PENDING, verified_at=None
    )

    run_action(admin, ProviderEndpoint, "verify", [endpoint.id])
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.verified_by) == (ProviderEndpoint.Status.VERIFIED, staff)

    run_action(admin, ProviderEndpoint, "suspend", [endpoint.id])
    endpoint.refresh_from_db()
    assert endpoint.status == ProviderEndpoint.Status.SUSPENDED


def test_the_market_page_shows_the_book(admin, buyer, market, make_open):
    make_open(
        Order.objects.create(
            org=buyer.org, market=market, side="buy", price_micro=4_900_000, lots=7
        )
    )

    page = admin.get(reverse("admin:marketplace_market_change", args=[market.id]))

    assert page.status_code == 200
    assert "4.900000" in page.content.decode()


@pytest.mark.parametrize("model", [ModelTier, Region, Market, ProviderEndpoint, Order, Trade])
def test_every_marketplace_list_page_loads(admin, market, model):
    url = reverse(f"admin:marketplace_{model._meta.model_name}_changelist")

    assert admin.get(url).status_code == 200


@pytest.mark.parametrize("model", [Order, Trade])
def test_orders_and_trades_are_read_only(admin, model):
    url = reverse(f"admin:marketplace_{model._meta.model_name}_add")

    assert admin.get(url).status_code == 403


def test_staff_add_a_tier(admin):
    url = reverse("admin:marketplace_modeltier_add")
    response = admin.post(
        url,
        {
            "name": "Vision",
            "slug": "vision",
            "rank": 9,
            "min_context_tokens": 32000,
            "min_output_tokens_per_s": 20,
            "max_ttft_ms": 3000,
            "max_output_tokens": 4096,
            "admitted_models": '["llava-1.6"]',
            "description": "",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert ModelTier.objects.get(slug="vision").admitted_models == ["llava-1.6"]


def test_a_contract_edit_breaking_a_market_rule_is_a_form_error(admin, market):
    url = reverse("admin:marketplace_market_change", args=[market.id])
    form = {
        "symbol": market.symbol,
        "min_lots": market.min_lots,
        "max_lots": market.max_lots,
        "reference_price_micro": 5_005_000,  # off the $0.01 tick
        "band_bp": market.band_bp,
        "output_weight_bp": market.output_weight_bp,
        "cache_weight_bp": market.cache_weight_bp,
        "maker_fee_bp": market.maker_fee_bp,
        "taker_fee_bp": market.taker_fee_bp,
        "delivery_days": market.delivery_days,
        "expiry_policy": market.expiry_policy,
    }

    response = admin.post(url, form)

    assert response.status_code == 200  # the form again, with the error
    assert "market_reference_price_on_tick" in response.content.decode()
    assert Market.objects.get(pk=market.pk).reference_price_micro == 5_000_000
    form["reference_price_micro"] = 5_010_000
    assert admin.post(url, form).status_code == 302
    assert Market.objects.get(pk=market.pk).reference_price_micro == 5_010_000
