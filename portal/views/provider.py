"""Portal pages for providers: their endpoints per market, and the capacity those back.

Registering calls endpoint_register; staff verify endpoints in the admin console. Asks are
posted from a market's page, with the ticket's sell side.
"""

from dataclasses import dataclass

from django.contrib import messages
from django.db.models import F, Sum
from django.shortcuts import redirect, render

from core.errors import ApplicationError
from marketplace import selectors as market_selectors
from marketplace.models import Market, Order, ProviderEndpoint
from marketplace.services import endpoint_register
from portal.forms import EndpointForm, form_apply_error
from portal.views.access import may_trade, member_required, principal_for, refuse
from settlement.selectors import entitlement_undelivered_tokens

PROVIDERS_ONLY = "Only provider organisations have endpoints. Sign up one that sells tokens."
REGISTER_REFUSED = "Your role can see the endpoints but not register one. Ask a trader or above."


@dataclass(frozen=True)
class MarketCapacity:
    """What a provider declared in a market against what it offers and owes there, in tokens."""

    market: Market
    verified_tokens_per_day: int
    pending_tokens_per_day: int
    capacity_tokens: int  # verified per day x the market's delivery days
    open_ask_tokens: int
    sold_undelivered_tokens: int

    @property
    def room_tokens(self) -> int:
        return max(0, self.capacity_tokens - self.open_ask_tokens - self.sold_undelivered_tokens)

    @property
    def room_lots(self) -> int:
        return self.room_tokens // self.market.lot_tokens


def _capacity_by_market(org_id: int, endpoints: list[ProviderEndpoint]) -> list[MarketCapacity]:
    by_market: dict[int, list[ProviderEndpoint]] = {}
    for endpoint in endpoints:
        by_market.setdefault(endpoint.market_id, []).append(endpoint)
    rows = []
    for group in by_market.values():
        market = group[0].market
        verified = sum(e.capacity_tokens_per_day for e in group if e.is_verified)
        pending = sum(
            e.capacity_tokens_per_day for e in group if e.status == ProviderEndpoint.Status.PENDING
        )
        open_lots = (
            market_selectors.order_list(
                org_id=org_id,
                market_id=market.id,
                side=Order.Side.SELL,
                status=list(Order.LIVE_STATUSES),
            ).aggregate(lots=Sum(F("lots") - F("filled_lots")))["lots"]
            or 0
        )
        rows.append(
            MarketCapacity(
                market=market,
                verified_tokens_per_day=verified,
                pending_tokens_per_day=pending,
                capacity_tokens=verified * market.delivery_days,
                open_ask_tokens=open_lots * market.lot_tokens,
                sold_undelivered_tokens=entitlement_undelivered_tokens(
                    provider_org_id=org_id, market_id=market.id
                ),
            )
        )
    return rows


@member_required
def endpoints(request):
    org = request.active_membership.org
    if not org.is_provider:
        return refuse(request, PROVIDERS_ONLY)
    allowed = may_trade(request)
    markets = list(market_selectors.market_list().exclude(status=Market.Status.CLOSED))
    form = EndpointForm(request.POST or None, markets=markets)
    if request.method == "POST":
        if not allowed:
            return refuse(request, REGISTER_REFUSED)
        if form.is_valid():
            data = form.cleaned_data
            try:
                endpoint = endpoint_register(
                    principal=principal_for(request),
                    market_id=data["market"],
                    base_url=data["base_url"],
                    models=data["models"],
                    capacity_tokens_per_day=data["capacity_tokens_per_day"],
                )
            except ApplicationError as error:
                form_apply_error(form, error)
            else:
                messages.success(
                    request,
                    f"Endpoint {endpoint.base_url} in {endpoint.market.symbol} is registered; "
                    "it counts towards your capacity once an operator verifies it.",
                )
                return redirect("portal:endpoints")
    mine = list(market_selectors.endpoint_list(org_id=org.id).select_related("market__tier"))
    context = {
        "form": form if allowed else None,
        "endpoints": mine,
        "capacities": _capacity_by_market(org.id, mine),
    }
    return render(request, "portal/endpoints.html", context)
