"""Every row lock the project takes, in one place, so the order is always the same.

The order is: market, then a provider's endpoints, then order, then entitlements, then
pay-as-you-go meters, then top-ups (a withdrawal's refunds), then hold, then ledger accounts,
each kind by ascending id. Two transactions that lock in the same order can wait on each other
but never deadlock. Models are looked up by name so this module stays free of business imports
(DESIGN.md import direction).
"""

from collections.abc import Iterable

from django.apps import apps
from django.db import connection
from django.db.models import Q


def _require_transaction() -> None:
    if not connection.in_atomic_block:
        raise RuntimeError("row locks are only meaningful inside a transaction")


def _matching_for_update(model_label: str, match: Q) -> list:
    _require_transaction()
    model = apps.get_model(model_label)
    return list(model.objects.select_for_update().filter(match).order_by("id"))


def entitlements_for_update(match: Q) -> list:
    """Lock the entitlements `match` selects, by ascending id (after orders, before meters)."""
    return _matching_for_update("settlement.Entitlement", match)


def payg_meters_for_update(match: Q) -> list:
    """Lock the pay-as-you-go meters `match` selects, by id (after entitlements, before holds)."""
    return _matching_for_update("settlement.PaygMeter", match)


def topups_for_update(match: Q) -> list:
    """Lock the top-ups `match` selects, by ascending id (before holds and ledger accounts)."""
    return _matching_for_update("settlement.TopUp", match)


def hold_for_update(*, reference: str):
    """Lock one hold by its reference; None when there is no such hold."""
    _require_transaction()
    model = apps.get_model("settlement", "Hold")
    return model.objects.select_for_update().filter(reference=reference).first()


def holds_for_update(*, references: Iterable[str]) -> dict:
    """Lock holds by reference in ascending id order and return them by reference."""
    _require_transaction()
    model = apps.get_model("settlement", "Hold")
    locked = model.objects.select_for_update().filter(reference__in=set(references)).order_by("id")
    return {hold.reference: hold for hold in locked}


def ledger_accounts_for_update(account_ids: Iterable[int]) -> dict:
    """Lock ledger accounts in ascending id order and return them by id."""
    _require_transaction()
    model = apps.get_model("settlement", "LedgerAccount")
    ids = sorted(set(account_ids))
    locked = list(model.objects.select_for_update().filter(id__in=ids).order_by("id"))
    return {account.id: account for account in locked}


def row_for_update(model_label: str, pk: int):
    """Lock one row of `app_label.Model` by primary key; None when it does not exist."""
    _require_transaction()
    model = apps.get_model(model_label)
    return model.objects.select_for_update().filter(pk=pk).first()


def market_lock(market_id: int) -> None:
    """Take the market's single-writer lock until the transaction ends; the first lock of all.

    The matching engine holds it while it works a market, and every change to the book made
    outside the engine (cancel, reduce) takes it too. On PostgreSQL it is a transaction-scoped
    advisory lock, so no market row is held. SQLite needs none: its IMMEDIATE transactions let
    only one writer in at a time.
    """
    _require_transaction()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [market_id])


def order_for_update(order_id: int):
    """Lock one order row (after the market lock, before holds); None when it does not exist."""
    _require_transaction()
    model = apps.get_model("marketplace", "Order")
    return model.objects.select_for_update().filter(pk=order_id).first()


def provider_endpoints_for_update(*, org_id: int, market_id: int) -> list:
    """Lock a provider's endpoints in one market, by id; they serialise its asks there.

    Taken after the market lock (if any) and before orders: an ask checks the capacity of these
    endpoints against the provider's open asks, so two asks must not both pass on the same room.
    """
    _require_transaction()
    model = apps.get_model("marketplace", "ProviderEndpoint")
    return list(
        model.objects.select_for_update().filter(org_id=org_id, market_id=market_id).order_by("id")
    )


# The settlement runs' advisory lock: two keys, a key space apart from the one-key locks the
# markets take (market_lock).
_SETTLEMENT_RUNS_KEYS = (0x5E77, 1)


def settlement_runs_lock() -> None:
    """Serialise settlement runs until the transaction ends; the first lock a run takes.

    SQLite needs none: its IMMEDIATE transactions let one writer in at a time.
    """
    _require_transaction()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(_SETTLEMENT_RUNS_KEYS))
