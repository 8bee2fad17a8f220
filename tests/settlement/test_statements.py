"""Statements: per org account and period, opening + movements = closing, in the run and the API."""

import csv
import io
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from settlement.models import LedgerAccount, LedgerEntry, StatementLine
from settlement.selectors import statement_rows
from settlement.services import ledger_check
from tests.settlement import usage_setup
from tests.settlement.settlement_setup import HOUR, hour_of, report, settle

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

Kind = LedgerAccount.Kind


@pytest.fixture
def settled(buyer, seller, market, buy):
    """A bought entitlement, usage in this hour, and the run that settled it."""
    buy(lots=2)
    moment = timezone.now()
    report(seller, buyer.org, market, tokens=300_000, at=moment)
    return settle(moment)


def _entries_total(org_id: int, kind: str, *, before) -> int:
    return (
        LedgerEntry.objects.filter(
            account__org_id=org_id, account__kind=kind, created_at__lt=before
        ).aggregate(total=Sum("amount_micro"))["total"]
        or 0
    )


def test_the_run_writes_a_statement_line_per_org_account_that_adds_up(settled, buyer, seller):
    lines = list(StatementLine.objects.filter(run=settled))
    assert {(line.org_id, line.account_kind) for line in lines} >= {
        (buyer.org.id, Kind.AVAILABLE),
        (buyer.org.id, Kind.ESCROW),
    }
    for line in lines:
        assert line.opening_micro + line.credits_micro - line.debits_micro == line.closing_micro
        assert sum(line.movements.values()) == line.credits_micro - line.debits_micro
        assert line.closing_micro == _entries_total(
            line.org_id, line.account_kind, before=settled.period_end
        )
        assert line.opening_micro == _entries_total(
            line.org_id, line.account_kind, before=settled.period_start
        )
    assert ledger_check() == []


def test_statements_chain_and_add_up_in_total(settled, buyer, seller):
    start = hour_of(timezone.now()) - 3 * HOUR
    middle = settled.period_end
    end = hour_of(timezone.now()) + 2 * HOUR
    first = {
        (r.org_id, r.account_kind): r for r in statement_rows(period_start=start, period_end=middle)
    }
    second = {
        (r.org_id, r.account_kind): r for r in statement_rows(period_start=middle, period_end=end)
    }
    for key, row in second.items():
        assert row.opening_micro == (first[key].closing_micro if key in first else 0)
    # A run's own entries count in the period they were written in (in production, the one
    # after the run's period; here, the test's clock puts them in it).
    earned = [table[(seller.org.id, Kind.EARNED)] for table in (first, second)]
    assert sum(row.credits_micro for row in earned) == 1_500_000 - 1_500
    # Across every org and the platform the ledger sums to zero; the orgs alone hold what the
    # platform's accounts owe them.
    org_total = sum(row.closing_micro for row in second.values())
    platform_total = sum(
        LedgerAccount.objects.filter(org=None).values_list("balance_micro", flat=True)
    )
    assert org_total + platform_total == 0


def test_the_statement_api_adds_up_for_the_caller_org(settled, buyer, seller, api_for):
    start = (hour_of(timezone.now()) - 3 * HOUR).isoformat()
    end = (hour_of(timezone.now()) + 2 * HOUR).isoformat()
    response = api_for(seller).get("/api/v1/statements", {"period_start": start, "period_end": end})
    assert response.status_code == 200, response.json()
    body = response.json()
    (earned,) = [line for line in body["lines"] if line["account"] == "earned"]
    assert earned == {
        "account": "earned",
        "currency": "USD",
        "opening": "0.000000",
        "credits": "1.498500",
        "debits": "0.000000",
        "closing": "1.498500",
        "movements": {"delivery": "1.498500"},
    }
    assert body["closing"] == "1.498500"
    # The buyer's statement holds only the buyer's accounts.
    buyer_body = (
        api_for(buyer).get("/api/v1/statements", {"period_start": start, "period_end": end}).json()
    )
    assert {line["account"] for line in buyer_body["lines"]} <= {"available", "held", "escrow"}


def test_the_statement_csv_has_a_row_per_account_and_a_total(settled, buyer, api_for):
    start = (hour_of(timezone.now()) - 3 * HOUR).isoformat()
    end = (hour_of(timezone.now()) + 2 * HOUR).isoformat()
    response = api_for(buyer).get(
        "/api/v1/statements.csv", {"period_start": start, "period_end": end}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["account", "currency", "opening", "credits", "debits", "closing"]
    accounts, total = rows[1:-1], rows[-1]
    assert total[0] == "total"
    for column in range(2, 6):
        assert sum(int(row[column].replace(".", "")) for row in accounts) == int(
            total[column].replace(".", "")
        )
    escrow = next(row for row in accounts if row[0] == "escrow")
    assert escrow[2:] == ["0.000000", "10.000000", "1.500000", "8.500000"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"period_start": "2026-01-02T00:00:00Z", "period_end": "2026-01-01T00:00:00Z"},
        {"period_start": "2020-01-01T00:00:00Z", "period_end": "2026-01-01T00:00:00Z"},
        {"period_start": "yesterday", "period_end": "2026-01-01T00:00:00Z"},
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/statements", "/api/v1/statements.csv"])
def test_a_bad_period_is_refused_in_the_one_error_shape(buyer, api_for, params, path):
    response = api_for(buyer).get(path, params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] and error["fields"]


def test_a_statement_without_activity_is_empty(buyer, api_for):
    end = timezone.now()
    response = api_for(buyer).get(
        "/api/v1/statements",
        {"period_start": (end - timedelta(days=1)).isoformat(), "period_end": end.isoformat()},
    )
    assert response.json()["lines"] == [] and response.json()["closing"] == "0.000000"
