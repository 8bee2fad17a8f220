"""GET /api/v1/ledger: the org's entries newest first, in cursor pages, with filters."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import transaction
from django.utils import timezone

from settlement.models import LedgerEntry
from settlement.services import hold_place, ledger_check

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class History:
    entry_ids: list[int]  # the org's entries, newest first
    between_holds: datetime  # a moment after the first hold and before the second


@pytest.fixture
def history(buyer, provider, fund) -> History:
    """Fund 50, hold 10 (bid:1), hold 5 (bid:2), fund 20: six entries on the buyer's accounts."""
    fund(buyer.org.id, 50_000_000)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=10_000_000, reference="bid:1")
    between_holds = timezone.now()
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=5_000_000, reference="bid:2")
    fund(buyer.org.id, 20_000_000)
    fund(provider.org.id, 99_000_000)  # another org's money must never show
    entry_ids = list(
        LedgerEntry.objects.filter(account__org=buyer.org)
        .order_by("-id")
        .values_list("id", flat=True)
    )
    assert len(entry_ids) == 6
    assert ledger_check() == []
    return History(entry_ids=entry_ids, between_holds=between_holds)


def _ledger(client, **params) -> list[dict]:
    response = client.get("/api/v1/ledger", params)
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_entries_come_newest_first_with_signed_amounts_and_running_balances(
    buyer, api_for, history
):
    entries = _ledger(api_for(buyer, scopes=["read"]))
    assert [e["id"] for e in entries] == history.entry_ids
    assert [(e["kind"], e["account"], e["amount"], e["balance_after"]) for e in entries] == [
        ("transfer", "available", "20.000000", "55.000000"),
        ("hold", "held", "5.000000", "15.000000"),
        ("hold", "available", "-5.000000", "35.000000"),
        ("hold", "held", "10.000000", "10.000000"),
        ("hold", "available", "-10.000000", "40.000000"),
        ("transfer", "available", "50.000000", "50.000000"),
    ]
    assert {e["currency"] for e in entries} == {"USD"}
    assert entries[1]["reference"] == "bid:2"


def test_next_links_walk_every_entry_exactly_once(buyer, api_for, history):
    client = api_for(buyer, scopes=["read"])
    seen: list[int] = []
    url = "/api/v1/ledger?page_size=4"
    pages = 0
    while url:
        body = client.get(url).json()
        assert len(body["results"]) <= 4
        seen += [entry["id"] for entry in body["results"]]
        url = body["next"]
        pages += 1
    assert pages == 2
    assert seen == history.entry_ids


def test_a_new_entry_does_not_shift_the_pages_already_walked(buyer, api_for, history, fund):
    client = api_for(buyer, scopes=["read"])
    first = client.get("/api/v1/ledger", {"page_size": 3}).json()
    fund(buyer.org.id, 1_000_000)
    second = client.get(first["next"]).json()
    walked = [e["id"] for e in first["results"] + second["results"]]
    assert walked == history.entry_ids


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"account": "held"}, [("hold", "held", "5.000000"), ("hold", "held", "10.000000")]),
        (
            {"kind": "transfer"},
            [("transfer", "available", "20.000000"), ("transfer", "available", "50.000000")],
        ),
        (
            {"reference": "bid:1"},
            [("hold", "held", "10.000000"), ("hold", "available", "-10.000000")],
        ),
        (
            {"account": "available", "kind": "hold"},
            [("hold", "available", "-5.000000"), ("hold", "available", "-10.000000")],
        ),
        ({"account": "escrow"}, []),
    ],
)
def test_filters_narrow_the_entries(buyer, api_for, history, params, expected):
    entries = _ledger(api_for(buyer, scopes=["read"]), **params)
    assert [(e["kind"], e["account"], e["amount"]) for e in entries] == expected


def test_created_after_and_before_split_the_history(buyer, api_for, history):
    client = api_for(buyer, scopes=["read"])
    moment = history.between_holds.isoformat()
    after = [e["id"] for e in _ledger(client, created_after=moment)]
    before = [e["id"] for e in _ledger(client, created_before=moment)]
    assert after == history.entry_ids[:3]
    assert before == history.entry_ids[3:]


def test_a_far_utc_offset_is_compared_in_utc(buyer, api_for, history):
    # +21:48 is valid ISO 8601 but out of PostgreSQL's offset range; it must not be a 500.
    client = api_for(buyer, scopes=["read"])
    moment = history.between_holds.astimezone(dt_timezone(timedelta(hours=21, minutes=48)))
    after = [e["id"] for e in _ledger(client, created_after=moment.isoformat())]
    assert after == history.entry_ids[:3]


def test_another_orgs_entries_never_show(provider, api_for, history):
    entries = _ledger(api_for(provider, scopes=["read"]))
    assert [(e["account"], e["amount"]) for e in entries] == [("available", "99.000000")]
    assert not set(history.entry_ids) & {e["id"] for e in entries}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"account": "fees"}, "account"),
        ({"kind": "gift"}, "kind"),
        ({"created_after": "last tuesday"}, "created_after"),
        ({"created_before": "2026-13-45T00:00:00Z"}, "created_before"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_an_invalid_filter_value_is_a_400_naming_the_field(buyer, api_for, params, field):
    response = api_for(buyer, scopes=["read"]).get("/api/v1/ledger", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["fields"][field]


def test_the_ledger_needs_the_read_scope(buyer, api_for):
    response = api_for(buyer, scopes=["trade"]).get("/api/v1/ledger")
    assert response.status_code == 403
