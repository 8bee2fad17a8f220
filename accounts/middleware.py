"""Sets `request.active_membership` for signed-in users: the org they act for in the portal."""

from accounts.models import Membership

ACTIVE_ORG_SESSION_KEY = "active_org_id"


class ActiveOrgMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.active_membership = None
        if request.user.is_authenticated:
            memberships = Membership.objects.select_related("org", "user").filter(user=request.user)
            wanted = request.session.get(ACTIVE_ORG_SESSION_KEY)
            chosen = None
            if wanted is not None:
                chosen = memberships.filter(org_id=wanted).first()
            if chosen is None:
                chosen = memberships.order_by("created_at", "id").first()
            request.active_membership = chosen
        return self.get_response(request)
