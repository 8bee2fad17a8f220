"""`manage.py demo_markets` and the match task wrapper."""

import io
import sys
import types
from datetime import timedelta

from django.core.management import call_command
from django.utils import timezone

from accounts.models import Org
from marketplace.models import Market, ModelTier, Order, ProviderEndpoint, Region
from marketplace.services import order_place
from marketplace.tasks import (
    STALE_PENDING_AFTER_S,
    market_match_task,
    markets_match_sweep_task,
)


def test_demo_markets_loads_five_tiers_in_four_regions_and_is_idempotent(db):
    call_command("demo_data", stdout=io.StringIO())
    call_command("demo_markets", stdout=io.StringIO())
    call_command("demo_markets", stdout=io.StringIO())

    assert ModelTier.objects.count() == 5
    assert set(Region.objects.values_list("code", flat=True)) == {"na", "eu", "sea", "me"}
    assert Market.objects.count() == 20
    provider = Org.objects.get(slug="demo-provider")
    endpoints = ProviderEndpoint.objects.filter(org=provider)
    assert endpoints.count() == 20
    assert set(endpoints.values_list("status", flat=True)) == {"verified"}
    assert endpoints.filter(market__symbol="FRONTIER-EU").get().base_url == (
        "http://127.0.0.1:9105/v1"
    )


def test_the_demo_frontier_tier_is_priced_like_todays_top_models(db):
    call_command("demo_markets", stdout=io.StringIO())

    frontier = Market.objects.get(symbol="FRONTIER-NA")
    assert (frontier.reference_price_micro, frontier.output_weight_bp) == (5_000_000, 60_000)
    economy = Market.objects.get(symbol="ECONOMY-NA")
    assert economy.reference_price_micro < frontier.reference_price_micro


def test_the_match_task_runs_the_engine_for_its_market(market, monkeypatch):
    calls = []
    fake_engine = types.SimpleNamespace(market_match=lambda *, market_id: calls.append(market_id))
    monkeypatch.setitem(sys.modules, "marketplace.engine", fake_engine)

    market_match_task(market.id)

    assert calls == [market.id]


def test_the_sweep_queues_markets_whose_orders_waited_too_long(
    market, seller, buyer, fund, django_capture_on_commit_callbacks, monkeypatch
):
    fund(buyer.org.id, 100_000_000)
    with django_capture_on_commit_callbacks(execute=False):
        stale = order_place(
            principal=buyer, market_id=market.id, side="buy", lots=10, price_micro=5_000_000
        )
        order_place(
            principal=seller, market_id=market.id, side="sell", lots=10, price_micro=5_500_000
        )
    queued = []
    monkeypatch.setattr(market_match_task, "delay", queued.append)
    assert markets_match_sweep_task() == []  # both are fresh: their own tasks are on the way

    Order.objects.filter(pk=stale.pk).update(
        created_at=timezone.now() - timedelta(seconds=STALE_PENDING_AFTER_S + 1)
    )
    assert markets_match_sweep_task() == [market.id]
    assert queued == [market.id]

    Market.objects.filter(pk=market.id).update(status=Market.Status.HALTED)
    assert markets_match_sweep_task() == []
