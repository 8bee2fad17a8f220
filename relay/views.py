"""The provider's view of the relay: how the relay sees each of its endpoints."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from marketplace.models import ProviderEndpoint
from relay import health


@login_required
def provider_health(request):
    """The active org's endpoints with the relay's window figures and routing class."""
    membership = request.active_membership
    if membership is None:
        return redirect("portal:org-create")
    endpoints = list(
        ProviderEndpoint.objects.filter(org_id=membership.org_id)
        .select_related("market")
        .order_by("market__symbol", "id")
    )
    figures = health.health_for([endpoint.id for endpoint in endpoints])
    rows = [
        {
            "endpoint": endpoint,
            "health": figures[endpoint.id],
            "routing": (
                f"normal (not judged: under {health.MIN_REQUESTS} requests)"
                if figures[endpoint.id].requests < health.MIN_REQUESTS
                else health.CLASS_NAMES[figures[endpoint.id].health_class]
            ),
        }
        for endpoint in endpoints
    ]
    context = {"rows": rows, "window_minutes": int(health.HEALTH_WINDOW.total_seconds() // 60)}
    return render(request, "relay/provider_health.html", context)
