"""Every row lock the project takes, in one place, so the order is always the same.

The order is: market, then order, then hold, then ledger accounts by ascending id. Two
transactions that lock in the same order can wait on each other but never deadlock. Models are
looked up by name so this module stays free of business imports (DESIGN.md import direction).
"""

from collections.abc import Iterable

from django.apps import apps
from django.db import connection


def _require_transaction() -> None:
    if not connection.in_atomic_block:
        raise RuntimeError("row locks are only meaningful inside a transaction")


def hold_for_update(*, reference: str):
    """Lock one hold by its reference; None when there is no such hold."""
    _require_transaction()
    model = apps.get_model("settlement", "Hold")
    return model.objects.select_for_update().filter(reference=reference).first()


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
