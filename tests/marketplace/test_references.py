"""What the engine writes keeps its references as foreign keys did, checked per statement.

Trades (marketplace migration 0006), entitlements and ledger entries (settlement migration 0016)
name their parents through core.references' triggers instead of foreign-key constraints. Each
case goes around the services, as a hand on the database would: the triggers are the guard, on
PostgreSQL and (for the children's own writes) on SQLite.
"""

import pytest
from django.db import IntegrityError, connection, transaction

from accounts.models import Org
from marketplace import engine
from marketplace.models import Trade
from marketplace.services import order_place
from settlement.models import Entitlement, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.services import ledger_check, ledger_post, org_account, platform_account, transfer
from tests.concurrency import delete_while_named
from tests.plans import sequential_scans

pytestmark = pytest.mark.django_db

MISSING_ID = 987_654_321

TRADE_REFERENCES = [
    "market_id",
    "taker_order_id",
    "maker_order_id",
    "buyer_org_id",
    "seller_org_id",
]
ENTITLEMENT_REFERENCES = ["market_id", "buyer_org_id", "provider_org_id"]
ENTRY_REFERENCES = ["account_id", "transaction_id"]


@pytest.fixture
def traded(market, seller, buyer, fund, django_capture_on_commit_callbacks) -> Trade:
    """One trade the engine matched and settled: its entitlement and ledger entries with it."""
    engine._BOOKS.clear()
    fund(buyer.org.id, 100_000_000)
    with django_capture_on_commit_callbacks(execute=False):
        order_place(
            principal=seller, market_id=market.id, side="sell", price_micro=4_800_000, lots=10
        )
        order_place(
            principal=buyer, market_id=market.id, side="buy", price_micro=5_000_000, lots=10
        )
    engine.market_match(market_id=market.id)
    engine._BOOKS.clear()
    return Trade.objects.get()


def _columns(table: str) -> list[str]:
    with connection.cursor() as cursor:
        described = connection.introspection.get_table_description(cursor, table)
    return [column.name for column in described if column.name != "id"]


def _copy(table: str, row_id: int, **values) -> int:
    """Insert a copy of row `row_id` of `table` with `values` in place of its own; its id."""
    columns = _columns(table)
    chosen = ", ".join("%s" if column in values else column for column in columns)
    params = [values[column] for column in columns if column in values]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {chosen} FROM {table}"
            " WHERE id = %s RETURNING id",
            [*params, row_id],
        )
        return cursor.fetchone()[0]


def _is_reference_error(error: IntegrityError) -> bool:
    cause = error.__cause__
    if connection.vendor == "postgresql":
        return getattr(cause, "sqlstate", None) == "23503"  # foreign_key_violation
    return "FOREIGN KEY constraint failed" in str(cause)


def _refused(write) -> None:
    with pytest.raises(IntegrityError) as refusal, transaction.atomic():
        write()
    assert _is_reference_error(refusal.value), refusal.value


def _trade_copy(trade: Trade, **values) -> int:
    # The taker and maker swapped: a pair the unique (taker, maker) constraint has not seen.
    values = {
        "taker_order_id": trade.maker_order_id,
        "maker_order_id": trade.taker_order_id,
        **values,
    }
    return _copy("marketplace_trade", trade.pk, **values)


@pytest.mark.parametrize("column", TRADE_REFERENCES)
def test_a_trade_naming_a_missing_parent_is_refused(traded, column):
    _refused(lambda: _trade_copy(traded, **{column: MISSING_ID}))
    assert Trade.objects.count() == 1


@pytest.mark.parametrize("column", ENTITLEMENT_REFERENCES)
def test_an_entitlement_naming_a_missing_parent_is_refused(traded, column):
    entitlement = Entitlement.objects.get()

    def write():
        trade_id = _trade_copy(traded)  # an entitlement's trade is its own (one to one)
        _copy("settlement_entitlement", entitlement.pk, trade_id=trade_id, **{column: MISSING_ID})

    _refused(write)
    assert (Trade.objects.count(), Entitlement.objects.count()) == (1, 1)


@pytest.mark.parametrize("column", ENTRY_REFERENCES)
def test_a_ledger_entry_naming_a_missing_parent_is_refused(traded, column):
    entry = LedgerEntry.objects.order_by("id").first()
    entries = LedgerEntry.objects.count()
    _refused(lambda: _copy("settlement_ledgerentry", entry.pk, **{column: MISSING_ID}))
    assert LedgerEntry.objects.count() == entries
    assert ledger_check() == []


def _set(table: str, row_id: int, column: str, value: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", [value, row_id])


@pytest.mark.parametrize(
    ("table", "column"),
    [("marketplace_trade", column) for column in TRADE_REFERENCES]
    + [("settlement_entitlement", column) for column in ENTITLEMENT_REFERENCES],
)
def test_a_row_cannot_be_pointed_at_a_missing_parent(traded, table, column):
    row_id = traded.pk if table == "marketplace_trade" else Entitlement.objects.get().pk
    _refused(lambda: _set(table, row_id, column, MISSING_ID))


def test_updates_that_keep_the_references_are_not_checked_again(traded):
    """The draw-down's updates of an entitlement, and others that keep its parents, pass."""
    entitlement = Entitlement.objects.get()
    Entitlement.objects.filter(pk=entitlement.pk).update(tokens_used=1)
    entitlement.refresh_from_db()
    entitlement.save()  # every column written again, the references among them, unchanged
    assert entitlement.tokens_used == 1


def _parents(trade: Trade) -> list[tuple[str, int]]:
    entitlement = Entitlement.objects.get()
    entry = LedgerEntry.objects.filter(transaction__reference=f"trade:{trade.pk}").first()
    entry = entry or LedgerEntry.objects.order_by("-id").first()
    return [
        ("marketplace_market", trade.market_id),
        ("marketplace_order", trade.taker_order_id),
        ("marketplace_order", trade.maker_order_id),
        ("accounts_org", trade.buyer_org_id),
        ("accounts_org", entitlement.provider_org_id),
        ("settlement_ledgeraccount", entry.account_id),
    ]


@pytest.mark.postgres  # on SQLite a parent's delete is refused by Django's PROTECT alone
@pytest.mark.parametrize("position", range(6))
def test_a_parent_still_named_cannot_be_deleted(traded, position):
    table, parent_id = _parents(traded)[position]

    def delete():
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table} WHERE id = %s", [parent_id])

    _refused(delete)
    _refused(lambda: _set(table, parent_id, "id", MISSING_ID))


@pytest.mark.postgres
def test_a_parent_nothing_names_is_deleted_as_before(traded):
    lonely = Org.objects.create(name="Lonely", slug="lonely")
    account = org_account(org_id=lonely.pk, kind=LedgerAccount.Kind.AVAILABLE)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM settlement_ledgeraccount WHERE id = %s", [account.pk])
        cursor.execute("DELETE FROM accounts_org WHERE id = %s", [lonely.pk])
    assert not Org.objects.filter(pk=lonely.pk).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_account_an_uncommitted_posting_names_waits_and_then_cannot_be_deleted(db):
    """The postings' check locks the account FOR KEY SHARE until their transaction ends."""
    fresh = Org.objects.create(name="Fresh", slug="fresh")
    account = org_account(org_id=fresh.pk, kind=LedgerAccount.Kind.AVAILABLE)

    def post() -> None:
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING), account, 1_000
            ),
            reference="held open",
        )

    outcomes = delete_while_named(
        post,
        table="settlement_ledgeraccount",
        parent_id=account.pk,
        child_table="settlement_ledgerentry",
    )

    assert outcomes == ["waited", "refused"]
    assert LedgerEntry.objects.filter(account=account).count() == 1


@pytest.mark.postgres
def test_the_checks_look_each_parent_up_by_key_not_by_scanning_its_table(traded):
    """Migration 0007 here and settlement 0017: a semi-join planned while the tables were
    small (as in a test) scanned every parent table through, on every statement after."""
    entitlement = Entitlement.objects.get()
    entry = LedgerEntry.objects.order_by("id").first()
    parents = [
        "marketplace_market",
        "marketplace_order",
        "accounts_org",
        "settlement_ledgeraccount",
        "settlement_ledgertransaction",
    ]
    for _ in range(2):  # the second round runs on the plans the first one cached
        before = transaction.savepoint()
        with sequential_scans(parents) as scans:
            trade_id = _trade_copy(traded)
            _copy("settlement_entitlement", entitlement.pk, trade_id=trade_id)
            _copy("settlement_ledgerentry", entry.pk)  # unbalanced, and never committed
        transaction.savepoint_rollback(before)  # the (taker, maker) pair is free again
        assert scans == dict.fromkeys(parents, 0)
