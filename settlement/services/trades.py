"""Settling matched trades: the buyer's collateral becomes escrow, and each trade an entitlement.

Called by the matching engine once per batch, inside the engine's transaction, so the trades,
the order states, the ledger moves and the entitlements commit together or not at all.

For every trade: the buyer's hold on its bid pays the notional into the buyer's escrow and the
buyer's fee into the platform's fees, as one ledger transaction keyed by the trade. When a bid
is finished (filled, expired, cancelled, rejected) whatever is left on its hold returns to
`available` in a hold release of its own: that is the price improvement (the bid held its
limit price, trades happen at the maker's price) and the unused fee margin. The release stays a
transaction of its own kind, rather than two more entries in the bid's last trade, because the
statements report each account's movements by transaction kind: folded in, the price
improvement would read as part of the trade.

A batch's trades come as columns (`TradeFills`): at the engine's volume an object per trade and
per posting cost more than the statements that write them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone

from core.bulk import rows_insert, rows_update, text_array
from settlement.errors import HoldExceeded, HoldNotFound
from settlement.models import Entitlement, Hold, LedgerAccount, LedgerTransaction
from settlement.services.batch import ledger_post_many, org_accounts_bulk
from settlement.services.ledger import platform_account

Kind = LedgerAccount.Kind

# Plain strings, not the choices enums: core.bulk sends a column of str as one array literal,
# and anything else through the driver's adaptation, element by element.
_OPEN, _CLOSED = Hold.Status.OPEN.value, Hold.Status.CLOSED.value
_TRADE, _HOLD_RELEASE = (
    LedgerTransaction.Kind.TRADE.value,
    LedgerTransaction.Kind.HOLD_RELEASE.value,
)


@dataclass(frozen=True, slots=True)
class TradeFills:
    """One market's trades of a batch, column by column: position i of every list is trade i.

    The contract terms (`market_id` to `expires_at`) are the market's, the same for every trade,
    and are copied onto each entitlement.
    """

    market_id: int
    output_weight_bp: int
    cache_weight_bp: int
    expiry_policy: str
    expires_at: datetime
    trade_ids: Sequence[int]
    buyer_org_ids: Sequence[int]
    seller_org_ids: Sequence[int]
    buy_hold_references: Sequence[str]
    tokens: Sequence[int]
    price_micro: Sequence[int]
    notional_micro: Sequence[int]
    buyer_fee_micro: Sequence[int]
    seller_fee_bp: Sequence[int]


# A locked hold as a list, in this order; the last two are the values as read, to tell which
# holds changed.
_ID, _ORG, _AMOUNT, _CAPTURED, _RELEASED, _STATUS, _READ_CAPTURED, _READ_RELEASED = range(8)


def _remaining_micro(hold: list) -> int:
    return hold[_AMOUNT] - hold[_CAPTURED] - hold[_RELEASED]


def _holds_for_update(references: set[str]) -> dict[str, list]:
    """Lock the holds by reference, in ascending id order (core.locks order: after the orders)."""
    if connection.vendor == "postgresql":
        # One array parameter rather than an IN list of a thousand references, which the ORM
        # builds and the server parses one by one.
        with connection.cursor() as cursor:
            cursor.execute(_HOLDS_FOR_UPDATE_SQL, [text_array(sorted(references))])
            rows = cursor.fetchall()
    else:
        rows = (
            Hold.objects.select_for_update()
            .filter(reference__in=references)
            .order_by("id")
            .values_list(*_HOLD_COLUMNS)
        )
    return {
        reference: [hold_id, org_id, amount, captured, released, status, captured, released]
        for reference, hold_id, org_id, amount, captured, released, status in rows
    }


# What a locked hold is read as, reference first; the columns are the fields' own names.
_HOLD_COLUMNS = (
    "reference",
    "id",
    "org_id",
    "amount_micro",
    "captured_micro",
    "released_micro",
    "status",
)
_HOLDS_FOR_UPDATE_SQL = (
    f"SELECT {', '.join(_HOLD_COLUMNS)} FROM {Hold._meta.db_table}"  # noqa: S608
    " WHERE reference = ANY(%s::varchar[]) ORDER BY id FOR UPDATE"
)


def trades_settle(*, fills: TradeFills, finished_hold_references: Sequence[str]) -> None:
    """Book `fills` and release what is left on finished bids' holds. Inside the engine's txn."""
    references = set(fills.buy_hold_references) | set(finished_hold_references)
    if not references:
        return
    holds = _holds_for_update(references)
    missing = references - holds.keys()
    if missing:
        raise HoldNotFound(f"no holds for {sorted(missing)[:5]}")
    org_ids = {hold[_ORG] for hold in holds.values()}
    accounts = org_accounts_bulk(org_ids=org_ids, kinds=[Kind.AVAILABLE, Kind.HELD, Kind.ESCROW])
    fees_id = platform_account(kind=Kind.FEES).id
    # Each org's account ids, looked up once: a batch books thousands of postings, and every
    # lookup by (org, kind) hashes a choices enum in Python.
    held_ids = {org_id: accounts[(org_id, Kind.HELD)].id for org_id in org_ids}
    escrow_ids = {org_id: accounts[(org_id, Kind.ESCROW)].id for org_id in org_ids}
    available_ids = {org_id: accounts[(org_id, Kind.AVAILABLE)].id for org_id in org_ids}

    trade_keys = [f"trade:{trade_id}" for trade_id in fills.trade_ids]
    kinds = [_TRADE] * len(trade_keys)
    references_out, keys = list(trade_keys), trade_keys
    leg_transactions: list[int] = []
    leg_accounts: list[int] = []
    leg_amounts: list[int] = []
    for index, (reference, notional_micro, fee_micro) in enumerate(
        zip(fills.buy_hold_references, fills.notional_micro, fills.buyer_fee_micro, strict=True)
    ):
        hold = holds[reference]
        spent_micro = notional_micro + fee_micro
        if hold[_STATUS] != _OPEN or spent_micro > _remaining_micro(hold):
            raise HoldExceeded(
                f"trade {fills.trade_ids[index]} needs {spent_micro}, hold {reference} "
                f"has {_remaining_micro(hold)} ({hold[_STATUS]})"
            )
        hold[_CAPTURED] += spent_micro
        org_id = hold[_ORG]
        if fee_micro:
            leg_transactions += (index, index, index)
            leg_accounts += (held_ids[org_id], escrow_ids[org_id], fees_id)
            leg_amounts += (-spent_micro, notional_micro, fee_micro)
        else:  # a fee of 0 bp, or one that rounds to nothing, has no entry
            leg_transactions += (index, index)
            leg_accounts += (held_ids[org_id], escrow_ids[org_id])
            leg_amounts += (-spent_micro, notional_micro)
    for reference in finished_hold_references:
        hold = holds[reference]
        left_micro = _remaining_micro(hold)
        if not left_micro:
            continue
        index = len(keys)
        kinds.append(_HOLD_RELEASE)
        references_out.append(reference)
        keys.append(f"release:{reference}:final")
        leg_transactions += (index, index)
        leg_accounts += (held_ids[hold[_ORG]], available_ids[hold[_ORG]])
        leg_amounts += (-left_micro, left_micro)
        hold[_RELEASED] += left_micro

    ledger_post_many(
        kinds=kinds,
        references=references_out,
        idempotency_keys=keys,
        leg_transactions=leg_transactions,
        leg_accounts=leg_accounts,
        leg_amounts=leg_amounts,
    )
    now = timezone.now()
    _holds_write(holds.values(), closed_at=now)
    rows_insert(
        Entitlement,
        columns={
            "trade_id": fills.trade_ids,
            "buyer_org_id": fills.buyer_org_ids,
            "provider_org_id": fills.seller_org_ids,
            "tokens_bought": fills.tokens,
            "price_micro": fills.price_micro,
            "value_micro": fills.notional_micro,
            "provider_fee_bp": fills.seller_fee_bp,
        },
        constants={
            "market_id": fills.market_id,
            "output_weight_bp": fills.output_weight_bp,
            "cache_weight_bp": fills.cache_weight_bp,
            "expiry_policy": fills.expiry_policy,
            "expires_at": fills.expires_at,
            "created_at": now,
        },
    )


def _holds_write(holds, *, closed_at: datetime) -> None:
    """Write the holds that changed: those spent to nothing close, the others stay open.

    Two updates of int columns, each state and closing time one parameter, rather than one
    update with a column of states and one of times, which the driver adapts value by value.
    """
    closing: list[list] = []
    staying: list[list] = []
    for hold in holds:
        if hold[_CAPTURED] == hold[_READ_CAPTURED] and hold[_RELEASED] == hold[_READ_RELEASED]:
            continue
        (closing if _remaining_micro(hold) == 0 else staying).append(hold)
    for changed, constants in (
        (closing, {"status": _CLOSED, "closed_at": closed_at}),
        (staying, {}),
    ):
        rows_update(
            Hold,
            ids=[hold[_ID] for hold in changed],
            columns={
                "captured_micro": [hold[_CAPTURED] for hold in changed],
                "released_micro": [hold[_RELEASED] for hold in changed],
            },
            constants=constants,
        )
