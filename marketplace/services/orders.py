"""Orders: place, cancel and reduce, everything around the matching engine.

Placing validates the whole order before anything is written, then inserts it `pending` with
its bid's hold (`order:<id>`) in one transaction and queues the market's match task after
commit. The engine (marketplace.engine) is the only writer of matches. Cancel and reduce take
the market's lock first, the same lock the engine holds while it works a batch, so they see an
order either before the engine took it or after its outcome committed, never in between; when
they change the book (an open order) they bump `Market.book_version` so the engine rebuilds the
book it keeps in memory.

Money: a bid holds the notional of its lots at its limit price (a market bid: at the top of the
price band) plus the higher of the maker and taker fee, rounded up. Trades happen at the maker's
price, so what the hold has left when a bid ends (price improvement, unused fee) goes back to
the buyer. Asks hold no money; they are limited by the provider's verified capacity.
"""

import hashlib

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.principal import Principal
from core import locks
from core.errors import ApplicationError, IdempotencyKeyReused
from marketplace.errors import DuplicateClientOrderId, InvalidReduce, OrderNotFound, OrderNotLive
from marketplace.models import Market, Order, OrderReduction
from marketplace.services.order_rules import (
    ask_capacity_check,
    bid_hold_micro,
    committed_ask_tokens,
    hold_price_micro,
    market_for_order,
    order_check,
    tif_or_default,
    verified_capacity_tokens,
)
from marketplace.tasks import market_match_task
from settlement.services import hold_place, hold_release

Side = Order.Side
Status = Order.Status
Stp = Order.SelfTradePrevention
Type = Order.Type


def _fingerprint(**fields) -> str:
    text = "|".join(f"{name}={fields[name]}" for name in sorted(fields))
    return hashlib.sha256(text.encode()).hexdigest()


def _replay(order: Order, fingerprint: str) -> Order:
    if order.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    return order


def order_place(
    *,
    principal: Principal,
    market_id: int,
    side: str,
    type: str = Type.LIMIT,  # the order's type, as the API names it
    tif: str | None = None,
    price_micro: int | None = None,
    lots: int,
    post_only: bool = False,
    stp: str = Stp.EXPIRE_TAKER,
    client_order_id: str | None = None,
    idempotency_key: str | None = None,
    market: Market | None = None,
) -> Order:
    """Validate an order, insert it pending with its bid's hold, queue the match after commit.

    A retry with the same `idempotency_key` returns the first order, as it is now; the same key
    with other parameters is refused. `market`, when the caller has already read the market of
    `market_id`, saves reading it again.
    """
    tif = tif_or_default(type, tif)
    fingerprint = _fingerprint(
        market_id=market_id,
        side=side,
        type=type,
        tif=tif,
        price_micro=price_micro,
        lots=lots,
        post_only=post_only,
        stp=stp,
        client_order_id=client_order_id,
    )
    try:
        return _order_insert(
            principal=principal,
            market_id=market_id,
            market=market,
            side=side,
            type=type,
            tif=tif,
            price_micro=price_micro,
            lots=lots,
            post_only=post_only,
            stp=stp,
            client_order_id=client_order_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
    except IntegrityError:
        # A retry, or a concurrent twin that committed first: the insert broke a unique
        # constraint and the transaction rolled back whole; the constraints say which. Deciding
        # it after the rollback, rather than looking first or under a savepoint, saves every new
        # order the round trips.
        org = principal.org
        if idempotency_key is not None and (first := _by_key(org.id, idempotency_key)):
            return _replay(first, fingerprint)
        if client_order_id is not None and (
            Order.objects.filter(org=org, client_order_id=client_order_id).exists()
        ):
            raise DuplicateClientOrderId(
                fields={"client_order_id": ["Already used by your org."]}
            ) from None
        raise
    except ApplicationError:
        # A retry is answered with the first order even where the rules would refuse it now
        # (the market halted, the band moved, the funds were spent since).
        if idempotency_key is not None and (first := _by_key(principal.org.id, idempotency_key)):
            return _replay(first, fingerprint)
        raise


def _by_key(org_id: int, idempotency_key: str) -> Order | None:
    return Order.objects.filter(org_id=org_id, idempotency_key=idempotency_key).first()


@transaction.atomic(durable=True)
def _order_insert(
    *,
    principal: Principal,
    market_id: int,
    market: Market | None,
    side: str,
    type: str,
    tif: str,
    price_micro: int | None,
    lots: int,
    post_only: bool,
    stp: str,
    client_order_id: str | None,
    idempotency_key: str | None,
    fingerprint: str,
) -> Order:
    """order_place's transaction: check, insert the order and its hold, queue the match.

    A used idempotency key or client order id is found by the insert's unique constraints, not
    looked up first: order_place answers those after the rollback.
    """
    org = principal.org
    if market is None or market.pk != market_id:
        market = market_for_order(market_id)
    order_check(
        org=org,
        market=market,
        side=side,
        order_type=type,
        tif=tif,
        price_micro=price_micro,
        lots=lots,
        post_only=post_only,
        stp=stp,
    )
    if side == Side.SELL:
        ask_capacity_check(org_id=org.id, market=market, lots=lots)
    hold_micro = bid_hold_micro(market, side=side, price_micro=price_micro, lots=lots)

    order = Order.objects.create(
        org=org,
        market=market,
        created_by=principal.user,
        side=side,
        type=type,
        tif=tif,
        post_only=post_only,
        stp=stp,
        price_micro=price_micro,
        lots=lots,
        hold_micro=hold_micro,
        client_order_id=client_order_id,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
    )
    if hold_micro:
        hold_place(org_id=org.id, amount_micro=hold_micro, reference=order.hold_reference)
    market_match_task.delay_on_commit(market.id)
    return order


def _order_of(principal: Principal, order_id: int) -> Order:
    order = Order.objects.filter(pk=order_id, org=principal.org).first()
    if order is None:
        raise OrderNotFound()  # other orgs' orders do not exist for this caller
    return order


def _book_changed(market_id: int) -> None:
    Market.objects.filter(pk=market_id).update(book_version=F("book_version") + 1)


def orders_cancel_locked(orders: list[Order]) -> list[Order]:
    """Cancel live orders and release their holds. Inside the caller's transaction, which holds
    the market's lock and the orders' rows."""
    now = timezone.now()
    touched_books = set()
    for order in orders:
        if order.status == Status.OPEN:
            touched_books.add(order.market_id)
        order.status = Status.CANCELLED
        order.updated_at = now
    Order.objects.bulk_update(orders, ["status", "updated_at"])
    for market_id in sorted(touched_books):
        _book_changed(market_id)
    for order in orders:
        if order.hold_micro:
            hold_release(reference=order.hold_reference)
    return orders


def asks_trim_to_capacity_locked(*, org_id: int, market: Market, endpoints) -> list[Order]:
    """Cancel the provider's newest live asks until what it offers and sold fits the capacity its
    verified `endpoints` still declare (after a suspension). Inside the caller's transaction,
    which holds the market's lock and the provider's endpoints in that market."""
    excess_tokens = committed_ask_tokens(org_id=org_id, market=market) - (
        verified_capacity_tokens(endpoints, market)
    )
    if excess_tokens <= 0:
        return []
    newest_first = (
        Order.objects.select_for_update()
        .filter(org_id=org_id, market=market, side=Side.SELL, status__in=Order.LIVE_STATUSES)
        .order_by("-id")
    )
    cancelled = []
    for order in newest_first:
        if excess_tokens <= 0:
            break
        cancelled.append(order)
        excess_tokens -= order.remaining_lots * market.lot_tokens
    # Sold, undelivered tokens stay owed: a suspension cancels offers, never contracts.
    return orders_cancel_locked(cancelled)


@transaction.atomic(durable=True)
def order_cancel(*, principal: Principal, order_id: int) -> Order:
    """Cancel a live order of the principal's org, under the market's lock; release its hold."""
    order = _order_of(principal, order_id)
    # The lock is taken for pending orders too: the engine reads a batch of pending orders under
    # it and then writes their outcome, so a cancel slipping in between would be overwritten.
    # Waiting for the engine's batch to commit is the price, and it is a short one.
    locks.market_lock(order.market_id)
    order = locks.order_for_update(order.pk)
    if not order.is_live:
        raise OrderNotLive(f"The order is {order.status}.")
    return orders_cancel_locked([order])[0]


@transaction.atomic(durable=True)
def order_cancel_all(*, principal: Principal, market_id: int) -> list[Order]:
    """Cancel every live order of the principal's org in one market, under the market's lock."""
    market = market_for_order(market_id)
    locks.market_lock(market.id)
    orders = list(
        Order.objects.select_for_update()
        .filter(org=principal.org, market=market, status__in=Order.LIVE_STATUSES)
        .order_by("id")
    )
    return orders_cancel_locked(orders)


@transaction.atomic(durable=True)
def order_reduce(
    *, principal: Principal, order_id: int, by_lots: int, idempotency_key: str | None = None
) -> Order:
    """Take `by_lots` off a live order, keeping its place in the queue; release that collateral.

    The hold keeps exactly what the lots left need at the order's price (plus the higher fee)
    and releases the rest; taking off everything that remains is a cancel, so it is refused.
    A retry with the same `idempotency_key` reduces nothing more and returns the order as it is
    now; the same key with another `by_lots` is refused.
    """
    order = _order_of(principal, order_id)
    if by_lots <= 0:
        raise InvalidReduce(fields={"by_lots": ["At least 1."]})
    locks.market_lock(order.market_id)
    order = locks.order_for_update(order.pk)
    if idempotency_key is not None:
        # Under the order's row lock, so a concurrent twin has committed its reduction by now.
        first = OrderReduction.objects.filter(order=order, idempotency_key=idempotency_key).first()
        if first is not None:
            if first.by_lots != by_lots:
                raise IdempotencyKeyReused()
            return order
    if not order.is_live:
        raise OrderNotLive(f"The order is {order.status}.")
    if by_lots >= order.remaining_lots:
        raise InvalidReduce(
            fields={"by_lots": [f"Less than the {order.remaining_lots} lots left; or cancel."]}
        )
    order.lots -= by_lots
    order.reduced_lots += by_lots
    order.save(update_fields=["lots", "reduced_lots", "updated_at"])
    OrderReduction.objects.create(
        order=order,
        by_lots=by_lots,
        lots_after=order.lots,
        idempotency_key=idempotency_key,
        created_by=principal.user,
    )
    if order.status == Status.OPEN:
        _book_changed(order.market_id)
    if order.hold_micro:
        hold = locks.hold_for_update(reference=order.hold_reference)
        market = order.market
        still_needed = market.bid_hold_micro(
            lots=order.remaining_lots, price_micro=hold_price_micro(market, order.price_micro)
        )
        surplus = hold.remaining_micro - still_needed
        if surplus > 0:
            hold_release(reference=order.hold_reference, amount_micro=surplus)
    return order
