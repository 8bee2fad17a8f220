"""GET /api/v1/balances: the org's accounts as decimal strings, USD always listed."""

import pytest
from django.db import transaction

from settlement.services import hold_place, ledger_check

pytestmark = pytest.mark.django_db

ZERO = "0.000000"


def test_a_new_org_sees_zero_usd_balances(buyer, api_for):
    response = api_for(buyer, scopes=["read"]).get("/api/v1/balances")
    assert response.status_code == 200
    assert response.json() == [
        {
            "currency": "USD",
            "available": ZERO,
            "held": ZERO,
            "escrow": ZERO,
            "earned": ZERO,
            "payout_pending": ZERO,
            "total": ZERO,
        }
    ]


def test_funding_shows_up_as_available(buyer, api_for, fund):
    fund(buyer.org.id, 50_000_000)
    [usd] = api_for(buyer, scopes=["read"]).get("/api/v1/balances").json()
    assert (usd["available"], usd["total"]) == ("50.000000", "50.000000")
    assert ledger_check() == []


def test_a_hold_moves_money_from_available_to_held_and_keeps_the_total(buyer, api_for, fund):
    fund(buyer.org.id, 50_000_000)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=12_345_678, reference="bid:1")
    [usd] = api_for(buyer, scopes=["read"]).get("/api/v1/balances").json()
    assert (usd["available"], usd["held"], usd["total"]) == ("37.654322", "12.345678", "50.000000")
    assert ledger_check() == []


def test_amounts_keep_all_six_decimal_places(buyer, api_for, fund):
    fund(buyer.org.id, 1)
    [usd] = api_for(buyer, scopes=["read"]).get("/api/v1/balances").json()
    assert usd["available"] == "0.000001"


def test_an_org_sees_only_its_own_money(buyer, provider, api_for, fund):
    fund(provider.org.id, 70_000_000)
    [usd] = api_for(buyer, scopes=["read"]).get("/api/v1/balances").json()
    assert usd["total"] == ZERO


def test_a_key_without_read_cannot_see_balances(buyer, api_for, fund):
    fund(buyer.org.id, 50_000_000)
    response = api_for(buyer, scopes=["trade"]).get("/api/v1/balances")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "50" not in response.content.decode()
