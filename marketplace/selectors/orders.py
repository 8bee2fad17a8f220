"""Reads of an org's orders."""

from django.db.models import QuerySet

from marketplace.errors import OrderNotFound
from marketplace.models import Order


def order_list(
    *,
    org_id: int,
    market_id: int | None = None,
    market_symbol: str | None = None,
    status: str | list[str] | None = None,
    side: str | None = None,
    client_order_id: str | None = None,
) -> QuerySet[Order]:
    """The org's orders, newest first, filtered by whichever arguments are given."""
    orders = Order.objects.filter(org_id=org_id).select_related("market")
    if market_id is not None:
        orders = orders.filter(market_id=market_id)
    if market_symbol is not None:
        orders = orders.filter(market__symbol=market_symbol.upper())
    if isinstance(status, str):
        orders = orders.filter(status=status)
    elif status:
        orders = orders.filter(status__in=status)
    if side is not None:
        orders = orders.filter(side=side)
    if client_order_id is not None:
        orders = orders.filter(client_order_id=client_order_id)
    return orders.order_by("-id")


def order_get(*, org_id: int, order_id: int) -> Order:
    """An order of this org; other orgs' orders do not exist for the caller."""
    order = Order.objects.select_related("market").filter(pk=order_id, org_id=org_id).first()
    if order is None:
        raise OrderNotFound()
    return order
