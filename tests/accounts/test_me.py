"""GET /api/v1/me: who the caller is, for an API key and for a signed-in portal session."""

import pytest
from rest_framework.test import APIClient

from accounts.middleware import ACTIVE_ORG_SESSION_KEY
from accounts.models import ApiKey, Membership, Role
from tests.accounts.factories import MembershipFactory, OrgFactory

pytestmark = pytest.mark.django_db


def test_me_with_a_key_names_the_org_role_scopes_and_key(buyer, api_for):
    response = api_for(buyer, scopes=["read", "trade"]).get("/api/v1/me")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "email": buyer.user.email,
        "org": {
            "id": buyer.org.id,
            "name": "Acme Buyer",
            "slug": buyer.org.slug,
            "is_buyer": True,
            "is_provider": False,
        },
        "role": "owner",
        "scopes": ["read", "trade"],
        "via": "api_key",
        "api_key_prefix": ApiKey.objects.get().prefix,
    }


def test_me_with_a_portal_session_has_the_roles_scopes_and_no_key(buyer):
    client = APIClient()
    client.force_login(buyer.user)
    body = client.get("/api/v1/me").json()
    assert body["org"]["id"] == buyer.org.id
    assert body["via"] == "session"
    assert body["api_key_prefix"] is None
    assert body["scopes"] == ["payouts", "read", "relay", "trade", "usage:write"]


def test_me_with_a_session_follows_the_org_chosen_in_the_portal(buyer):
    other_org = OrgFactory(name="Second Org", is_buyer=False, is_provider=True)
    MembershipFactory(user=buyer.user, org=other_org, role=Role.VIEWER)
    client = APIClient()
    client.force_login(buyer.user)
    session = client.session
    session[ACTIVE_ORG_SESSION_KEY] = other_org.id
    session.save()
    body = client.get("/api/v1/me").json()
    assert (body["org"]["id"], body["role"], body["scopes"]) == (other_org.id, "viewer", ["read"])


def test_me_shows_a_keys_scopes_cut_down_to_its_creators_current_role(buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade", "payouts"])
    Membership.objects.filter(user=buyer.user, org=buyer.org).update(role=Role.TRADER)
    body = client.get("/api/v1/me").json()
    assert (body["role"], body["scopes"]) == ("trader", ["read", "trade"])


def test_me_needs_the_read_scope(buyer, api_for):
    response = api_for(buyer, scopes=["trade"]).get("/api/v1/me")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
