"""The relay in the admin: endpoint health from the relay's window, requests read-only."""

import pytest
from django.urls import reverse
from django.utils import timezone

from relay.models import HealthBucket
from tests.marketplace.factories import ProviderEndpointFactory


@pytest.fixture
def admin(client, staff):
    client.force_login(staff)
    return client


def test_staff_see_each_endpoints_health_and_routing_class(admin, provider, market):
    judged = ProviderEndpointFactory(org=provider.org, market=market)
    young = ProviderEndpointFactory(org=provider.org, market=market)
    minute = timezone.now().replace(second=0, microsecond=0)
    HealthBucket.objects.create(
        endpoint=judged,
        minute=minute,
        requests=200,
        successes=170,
        ttft_ms_total=200 * 150,
        ttft_samples=200,
        output_tokens=5_000,
        generation_ms_total=10_000,
    )
    HealthBucket.objects.create(endpoint=young, minute=minute, requests=10, successes=10)

    page = admin.get(reverse("admin:relay_endpointhealth_changelist")).content.decode()

    assert "85.00 %" in page and "150 ms" in page and "500" in page
    assert "degraded" in page
    assert "not judged" in page


def test_relay_requests_are_read_only(admin):
    response = admin.get(reverse("admin:relay_relayrequest_add"))
    assert response.status_code == 403


def test_a_provider_sees_its_own_endpoints_health_in_the_portal(client, provider, buyer, market):
    own = ProviderEndpointFactory(org=provider.org, market=market)
    other = ProviderEndpointFactory(org=buyer.org, market=market)  # another org's
    minute = timezone.now().replace(second=0, microsecond=0)
    HealthBucket.objects.create(endpoint=own, minute=minute, requests=120, successes=90)
    client.force_login(provider.user)

    page = client.get(reverse("relay:provider-health")).content.decode()

    assert f'data-testid="endpoint-{own.id}"' in page
    assert f'data-testid="endpoint-{other.id}"' not in page
    assert "75 %" in page and "last resort" in page
