"""Provider endpoints: a provider declares where and what it serves in a market; staff verify.

Only verified endpoints count towards what a provider may sell (see orders.order_place).
"""

from urllib.parse import urlsplit

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from accounts.principal import Principal
from core import locks
from marketplace.errors import (
    DuplicateEndpoint,
    EndpointNotFound,
    EndpointStatusUnchanged,
    InvalidEndpoint,
    MarketClosed,
    MarketNotFound,
    ModelNotAdmitted,
    NotASeller,
)
from marketplace.models import Market, ProviderEndpoint
from marketplace.services.markets import require_staff
from marketplace.services.orders import asks_trim_to_capacity_locked

Status = ProviderEndpoint.Status
MAX_MODELS = 50


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidEndpoint(fields={"base_url": ["An http:// or https:// URL with a host."]})
    if parts.username or parts.password or parts.query or parts.fragment:
        # Credentials in a URL end up in logs; the relay authenticates with its own keys.
        raise InvalidEndpoint(fields={"base_url": ["No credentials, query or fragment."]})
    return base_url.strip().rstrip("/")


def _check_models(market: Market, model_names: list[str]) -> list[str]:
    names = [name.strip() for name in model_names if isinstance(name, str) and name.strip()]
    if not names or len(names) != len(model_names) or len(names) > MAX_MODELS:
        raise InvalidEndpoint(fields={"models": [f"Between 1 and {MAX_MODELS} model names."]})
    refused = [name for name in names if not market.tier.admits(name)]
    if refused:
        raise ModelNotAdmitted(
            f"The {market.tier.name} tier does not admit {', '.join(refused)}.",
            fields={"models": [f"Admitted: {', '.join(market.tier.admitted_models)}."]},
        )
    return sorted(set(names))


@transaction.atomic(durable=True)
def endpoint_register(
    *,
    principal: Principal,
    market_id: int,
    base_url: str,
    models: list[str],
    capacity_tokens_per_day: int,
) -> ProviderEndpoint:
    """Declare an endpoint of the principal's provider org in a market; it waits for staff."""
    if not principal.org.is_provider:
        raise NotASeller("Only provider organisations register endpoints.")
    market = Market.objects.select_related("tier").filter(pk=market_id).first()
    if market is None:
        raise MarketNotFound()
    if market.status == Market.Status.CLOSED:
        raise MarketClosed()
    url = _check_base_url(base_url)
    names = _check_models(market, models)
    if capacity_tokens_per_day <= 0:
        raise InvalidEndpoint(fields={"capacity_tokens_per_day": ["Must be positive."]})
    try:
        with transaction.atomic():
            return ProviderEndpoint.objects.create(
                org=principal.org,
                market=market,
                base_url=url,
                models=names,
                capacity_tokens_per_day=capacity_tokens_per_day,
            )
    except IntegrityError:
        if ProviderEndpoint.objects.filter(org=principal.org, market=market, base_url=url).exists():
            raise DuplicateEndpoint() from None
        raise


def _endpoint_move(
    *, actor: User, endpoint_id: int, sources: tuple[str, ...], target: str, **changes
) -> ProviderEndpoint:
    require_staff(actor)
    if not ProviderEndpoint.objects.filter(pk=endpoint_id).exists():
        raise EndpointNotFound()
    moved = ProviderEndpoint.objects.filter(pk=endpoint_id, status__in=sources).update(
        status=target, updated_at=timezone.now(), **changes
    )
    endpoint = ProviderEndpoint.objects.select_related("org", "market").get(pk=endpoint_id)
    if not moved:
        raise EndpointStatusUnchanged(
            f"The endpoint is {endpoint.status}; it cannot become {target}."
        )
    return endpoint


@transaction.atomic(durable=True)
def endpoint_verify(*, actor: User, endpoint_id: int) -> ProviderEndpoint:
    """Mark a pending or suspended endpoint verified: its capacity now backs the provider's asks."""
    return _endpoint_move(
        actor=actor,
        endpoint_id=endpoint_id,
        sources=(Status.PENDING, Status.SUSPENDED),
        target=Status.VERIFIED,
        verified_by=actor,
        verified_at=timezone.now(),
    )


@transaction.atomic(durable=True)
def endpoint_suspend(*, actor: User, endpoint_id: int) -> ProviderEndpoint:
    """Suspend an endpoint: its capacity no longer backs asks.

    The provider's newest live asks in the market are cancelled until what it offers and has
    sold fits the capacity of its endpoints still verified; with none left, every ask goes.
    Tokens already sold stay owed.
    """
    market_id = (
        ProviderEndpoint.objects.filter(pk=endpoint_id).values_list("market_id", flat=True).first()
    )
    if market_id is None:
        require_staff(actor)
        raise EndpointNotFound()
    locks.market_lock(market_id)  # the lock order: market, then the provider's endpoints
    endpoint = _endpoint_move(
        actor=actor,
        endpoint_id=endpoint_id,
        sources=(Status.PENDING, Status.VERIFIED),
        target=Status.SUSPENDED,
    )
    endpoints = locks.provider_endpoints_for_update(org_id=endpoint.org_id, market_id=market_id)
    asks_trim_to_capacity_locked(
        org_id=endpoint.org_id, market=endpoint.market, endpoints=endpoints
    )
    return endpoint
