import re

import pytest
from django.db import transaction

from accounts.models import Role
from settlement.models import LedgerAccount
from settlement.services import hold_place, ledger_check
from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db

Kind = LedgerAccount.Kind


def _balance_card(html: str, name: str) -> str:
    match = re.search(
        rf'data-testid="balance-{name}">.*?<strong class="figure">([^<]+)</strong>', html, re.S
    )
    return match.group(1)


def _ledger_rows(html: str) -> list[str]:
    body = re.search(r"<tbody>(.*?)</tbody>", html, re.S)
    return re.findall(r"<tr>.*?</tr>", body.group(1), re.S) if body else []


def test_dashboard_shows_the_org_balances(member_client, fund):
    client, membership = member_client()
    fund(membership.org_id, 120_500_000)
    with transaction.atomic():
        hold_place(org_id=membership.org_id, amount_micro=20_000_000, reference="bid:test-1")

    html = client.get("/").content.decode()

    assert _balance_card(html, "available") == "$100.50"
    assert _balance_card(html, "held") == "$20.00"
    assert _balance_card(html, "escrow") == "$0.00"
    assert _balance_card(html, "earned") == "$0.00"
    assert _balance_card(html, "payout-pending") == "$0.00"
    assert ledger_check() == []


def test_dashboard_lists_the_org_ledger_newest_first(member_client, fund):
    client, membership = member_client()
    fund(membership.org_id, 50_000_000)
    with transaction.atomic():
        hold_place(org_id=membership.org_id, amount_micro=5_000_000, reference="bid:test-2")

    rows = _ledger_rows(client.get("/").content.decode())

    assert len(rows) == 3  # funding credit, then the hold: available -5, held +5
    assert "bid:test-2" in rows[0]
    assert "test-funding:" in rows[-1]
    assert "+$50.00" in rows[-1]
    assert ledger_check() == []


def test_dashboard_never_shows_another_orgs_ledger(member_client, fund):
    client, _ = member_client()
    stranger = MembershipFactory(role=Role.OWNER)
    fund(stranger.org_id, 70_000_000)

    html = client.get("/").content.decode()

    assert _balance_card(html, "available") == "$0.00"
    assert _ledger_rows(html) == []
    assert "No ledger entries yet." in html


def test_ledger_filter_by_account_kind_shows_only_that_account(member_client, fund):
    client, membership = member_client()
    fund(membership.org_id, 50_000_000)
    with transaction.atomic():
        hold_place(org_id=membership.org_id, amount_micro=5_000_000, reference="bid:test-3")

    rows = _ledger_rows(client.get("/", {"account": Kind.HELD}).content.decode())

    assert len(rows) == 1
    assert "Held (bid collateral)" in rows[0]
    assert "+$5.00" in rows[0]


def test_ledger_pages_hold_25_entries_and_link_to_older_ones(member_client, fund):
    client, membership = member_client()
    for _ in range(30):
        fund(membership.org_id, 1_000_000)

    first = client.get("/").content.decode()
    second = client.get("/", {"page": 2}).content.decode()

    assert len(_ledger_rows(first)) == 25
    assert 'href="?page=2" rel="next"' in first
    assert len(_ledger_rows(second)) == 5
    assert "Page 2 of 2" in second
    assert ledger_check() == []


def test_viewer_sees_the_dashboard(member_client, fund):
    client, membership = member_client(role=Role.VIEWER)
    fund(membership.org_id, 9_990_000)

    response = client.get("/")

    assert response.status_code == 200
    assert _balance_card(response.content.decode(), "available") == "$9.99"
