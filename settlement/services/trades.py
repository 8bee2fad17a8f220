"""Settling matched trades: the buyer's collateral becomes escrow, and each trade an entitlement.

Called by the matching engine once per batch, inside the engine's transaction, so the trades,
the order states, the ledger moves and the entitlements commit together or not at all.

For every trade: the buyer's hold on its bid pays the notional into the buyer's escrow and the
buyer's fee into the platform's fees. When a bid is finished (filled, expired, cancelled,
rejected) whatever is left on its hold returns to `available`: that is the price improvement
(the bid held its limit price, trades happen at the maker's price) and the unused fee margin.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone

from core.bulk import rows_insert, rows_update, text_array
from settlement.errors import HoldExceeded, HoldNotFound
from settlement.models import Entitlement, Hold, LedgerAccount, LedgerTransaction
from settlement.services.batch import TransactionSpec, ledger_post_batch, org_accounts_bulk
from settlement.services.ledger import Posting, platform_account

Kind = LedgerAccount.Kind


@dataclass(frozen=True, slots=True)
class TradeFill:
    trade_id: int
    market_id: int
    buyer_org_id: int
    seller_org_id: int
    buy_hold_reference: str
    tokens: int
    price_micro: int
    notional_micro: int
    buyer_fee_micro: int
    seller_fee_bp: int
    output_weight_bp: int
    cache_weight_bp: int
    expiry_policy: str
    expires_at: datetime


@dataclass(slots=True)
class _OpenHold:
    id: int
    org_id: int
    amount_micro: int
    captured_micro: int
    released_micro: int
    status: str
    closed_at: datetime | None

    @property
    def remaining_micro(self) -> int:
        return self.amount_micro - self.captured_micro - self.released_micro


def _holds_for_update(references: set[str]) -> dict[str, _OpenHold]:
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
    return {reference: _OpenHold(*fields) for reference, *fields in rows}


# What _OpenHold is made of, reference first; the columns are the fields' own names.
_HOLD_COLUMNS = (
    "reference",
    "id",
    "org_id",
    "amount_micro",
    "captured_micro",
    "released_micro",
    "status",
    "closed_at",
)
_HOLDS_FOR_UPDATE_SQL = (
    f"SELECT {', '.join(_HOLD_COLUMNS)} FROM {Hold._meta.db_table}"  # noqa: S608
    " WHERE reference = ANY(%s::varchar[]) ORDER BY id FOR UPDATE"
)


def trades_settle(*, fills: Sequence[TradeFill], finished_hold_references: Sequence[str]) -> None:
    """Book `fills` and release what is left on finished bids' holds. Inside the engine's txn."""
    references = {fill.buy_hold_reference for fill in fills} | set(finished_hold_references)
    if not references:
        return
    holds = _holds_for_update(references)
    missing = references - holds.keys()
    if missing:
        raise HoldNotFound(f"no holds for {sorted(missing)[:5]}")
    org_ids = {hold.org_id for hold in holds.values()}
    accounts = org_accounts_bulk(org_ids=org_ids, kinds=[Kind.AVAILABLE, Kind.HELD, Kind.ESCROW])
    fees_id = platform_account(kind=Kind.FEES).id
    # Each org's account ids, looked up once: a batch books thousands of postings, and every
    # lookup by (org, kind) hashes a choices enum in Python.
    held_ids = {org_id: accounts[(org_id, Kind.HELD)].id for org_id in org_ids}
    escrow_ids = {org_id: accounts[(org_id, Kind.ESCROW)].id for org_id in org_ids}
    available_ids = {org_id: accounts[(org_id, Kind.AVAILABLE)].id for org_id in org_ids}

    specs: list[TransactionSpec] = []
    # Plain strings, not the choices enums: core.bulk sends a column of str as one array
    # literal, and anything else through the driver's adaptation, element by element.
    open_status, trade_kind = Hold.Status.OPEN.value, LedgerTransaction.Kind.TRADE.value
    for fill in fills:
        hold = holds[fill.buy_hold_reference]
        notional_micro = fill.notional_micro
        spent_micro = notional_micro + fill.buyer_fee_micro
        if hold.status != open_status or spent_micro > hold.remaining_micro:
            raise HoldExceeded(
                f"trade {fill.trade_id} needs {spent_micro}, hold {fill.buy_hold_reference} "
                f"has {hold.remaining_micro} ({hold.status})"
            )
        hold.captured_micro += spent_micro
        key = f"trade:{fill.trade_id}"
        specs.append(
            TransactionSpec(
                kind=trade_kind,
                reference=key,
                idempotency_key=key,
                postings=[
                    Posting(held_ids[hold.org_id], -spent_micro),
                    Posting(escrow_ids[hold.org_id], notional_micro),
                    Posting(fees_id, fill.buyer_fee_micro),
                ],
            )
        )
    now = timezone.now()
    for reference in finished_hold_references:
        hold = holds[reference]
        left_micro = hold.remaining_micro
        if left_micro:
            specs.append(
                TransactionSpec(
                    kind=LedgerTransaction.Kind.HOLD_RELEASE.value,
                    reference=reference,
                    idempotency_key=f"release:{reference}:final",
                    postings=[
                        Posting(held_ids[hold.org_id], -left_micro),
                        Posting(available_ids[hold.org_id], left_micro),
                    ],
                )
            )
            hold.released_micro += left_micro
    for hold in holds.values():
        if hold.remaining_micro == 0 and hold.status == open_status:
            hold.status = Hold.Status.CLOSED.value
            hold.closed_at = now

    ledger_post_batch(specs)
    changed = list(holds.values())
    rows_update(
        Hold,
        ids=[hold.id for hold in changed],
        columns={
            "captured_micro": [hold.captured_micro for hold in changed],
            "released_micro": [hold.released_micro for hold in changed],
            "status": [hold.status for hold in changed],
            "closed_at": [hold.closed_at for hold in changed],
        },
    )
    rows_insert(
        Entitlement,
        columns={
            "trade_id": [fill.trade_id for fill in fills],
            "buyer_org_id": [fill.buyer_org_id for fill in fills],
            "provider_org_id": [fill.seller_org_id for fill in fills],
            "market_id": [fill.market_id for fill in fills],
            "tokens_bought": [fill.tokens for fill in fills],
            "price_micro": [fill.price_micro for fill in fills],
            "value_micro": [fill.notional_micro for fill in fills],
            "output_weight_bp": [fill.output_weight_bp for fill in fills],
            "cache_weight_bp": [fill.cache_weight_bp for fill in fills],
            "provider_fee_bp": [fill.seller_fee_bp for fill in fills],
            "expiry_policy": [fill.expiry_policy for fill in fills],
            "expires_at": [fill.expires_at for fill in fills],
        },
        constants={"created_at": now},
    )
