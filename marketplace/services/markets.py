"""Operators' changes to a market's trading status.

Halting keeps the book: open orders stay, owners may still cancel or reduce them, and new orders
are refused until the market resumes. Closing is final: the market's live orders are cancelled
and their holds released. Status changes are conditional UPDATEs, so two operators clicking at
once change it once.
"""

from django.db import transaction

from accounts.models import User
from core import locks
from marketplace.errors import MarketNotFound, MarketStatusUnchanged, StaffOnly
from marketplace.models import Market, Order
from marketplace.services.orders import orders_cancel_locked

Status = Market.Status


def require_staff(actor: User) -> None:
    """Refuse anyone but an active operator."""
    if not (actor.is_active and actor.is_staff):
        raise StaffOnly()


def _market_move(*, actor: User, market_id: int, sources: tuple[str, ...], target: str) -> Market:
    require_staff(actor)
    market = Market.objects.filter(pk=market_id).first()
    if market is None:
        raise MarketNotFound()
    moved = Market.objects.filter(pk=market_id, status__in=sources).update(status=target)
    if not moved:
        raise MarketStatusUnchanged(
            f"{market.symbol} is {market.status}; it cannot become {target}.",
        )
    market.refresh_from_db(fields=["status"])
    return market


@transaction.atomic(durable=True)
def market_halt(*, actor: User, market_id: int) -> Market:
    """Stop new orders in an open market; the book stays as it is."""
    return _market_move(
        actor=actor, market_id=market_id, sources=(Status.OPEN,), target=Status.HALTED
    )


@transaction.atomic(durable=True)
def market_resume(*, actor: User, market_id: int) -> Market:
    """Accept orders again in a halted market."""
    return _market_move(
        actor=actor, market_id=market_id, sources=(Status.HALTED,), target=Status.OPEN
    )


@transaction.atomic(durable=True)
def market_close(*, actor: User, market_id: int) -> Market:
    """Close an open or halted market for good, cancelling its live orders under its lock."""
    require_staff(actor)
    locks.market_lock(market_id)
    market = _market_move(
        actor=actor, market_id=market_id, sources=(Status.OPEN, Status.HALTED), target=Status.CLOSED
    )
    live = list(
        Order.objects.select_for_update()
        .filter(market_id=market_id, status__in=Order.LIVE_STATUSES)
        .order_by("id")
    )
    orders_cancel_locked(live)
    return market
