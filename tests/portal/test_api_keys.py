import datetime
import re

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.keys import key_digest
from accounts.models import ROLE_SCOPES, ApiKey, Role
from portal.forms import ApiKeyForm
from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def _secret_in(html: str) -> str | None:
    match = re.search(r"txk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}", html)
    return match.group(0) if match else None


def test_creating_a_key_shows_its_secret_in_the_response(member_client):
    client, membership = member_client(role=Role.OWNER)

    response = client.post("/api-keys/", {"name": "billing job", "scopes": ["read", "trade"]})

    assert response.status_code == 200
    secret = _secret_in(response.content.decode())
    api_key = ApiKey.objects.get()
    assert secret is not None
    assert api_key.secret_sha256 == key_digest(secret)
    assert (api_key.org_id, api_key.name, api_key.scopes) == (
        membership.org_id,
        "billing job",
        ["read", "trade"],
    )
    assert response["Cache-Control"].startswith("max-age=0")


def test_the_new_secret_works_against_the_api(member_client):
    client, _ = member_client(role=Role.ADMIN)
    response = client.post("/api-keys/", {"name": "script", "scopes": ["read"]})

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {_secret_in(response.content.decode())}")

    assert api.get("/api/v1/balances").status_code == 200


def test_the_secret_is_never_shown_again(member_client):
    client, _ = member_client(role=Role.OWNER)
    response = client.post("/api-keys/", {"name": "billing job", "scopes": ["read"]})
    secret = _secret_in(response.content.decode())

    listing = client.get("/api-keys/").content.decode()

    assert secret not in listing
    assert _secret_in(listing) is None
    assert f"txk_{ApiKey.objects.get().prefix}_…" in listing
    assert not any(secret in str(value) for value in client.session.values())


def test_key_list_shows_name_scopes_status_and_expiry(member_client):
    client, _ = member_client(role=Role.OWNER)
    day = timezone.now().date() + datetime.timedelta(days=30)

    client.post(
        "/api-keys/", {"name": "nightly", "scopes": ["read"], "expires_on": day.isoformat()}
    )
    html = client.get("/api-keys/").content.decode()

    api_key = ApiKey.objects.get()
    assert api_key.expires_at == datetime.datetime.combine(
        day + datetime.timedelta(days=1), datetime.time(), tzinfo=datetime.UTC
    )
    assert "nightly" in html
    assert '<span class="chip">read</span>' in html
    assert "Active" in html
    assert api_key.expires_at.strftime("%Y-%m-%d %H:%M") in html


def test_expiry_in_the_past_is_refused(member_client):
    client, _ = member_client(role=Role.OWNER)
    yesterday = timezone.now().date() - datetime.timedelta(days=1)

    response = client.post(
        "/api-keys/", {"name": "old", "scopes": ["read"], "expires_on": yesterday.isoformat()}
    )

    assert response.context["form"].errors["expires_on"] == ["Must be in the future."]
    assert _secret_in(response.content.decode()) is None
    assert not ApiKey.objects.exists()


def test_a_key_needs_a_scope(member_client):
    client, _ = member_client(role=Role.OWNER)

    response = client.post("/api-keys/", {"name": "nothing"})

    assert "scopes" in response.context["form"].errors
    assert not ApiKey.objects.exists()


def test_owner_may_grant_every_scope(member_client):
    client, _ = member_client(role=Role.OWNER)

    choices = client.get("/api-keys/").context["form"].fields["scopes"].choices

    assert [value for value, _ in choices] == ["read", "trade", "usage:write", "relay", "payouts"]


def test_key_form_offers_only_the_scopes_given():
    form = ApiKeyForm(allowed_scopes=ROLE_SCOPES[Role.TRADER])

    assert [value for value, _ in form.fields["scopes"].choices] == [
        "read",
        "trade",
        "usage:write",
        "relay",
    ]
    trader_form = ApiKeyForm(
        {"name": "x", "scopes": ["payouts"]}, allowed_scopes=ROLE_SCOPES[Role.TRADER]
    )
    assert "scopes" in trader_form.errors


def test_viewer_sees_keys_but_no_form(member_client):
    client, membership = member_client(role=Role.VIEWER)
    owner = MembershipFactory(org=membership.org, role=Role.OWNER)
    ApiKey.objects.create(
        org=membership.org,
        created_by=owner.user,
        name="ops",
        prefix="abcdef123456",
        scopes=["read"],
    )

    response = client.get("/api-keys/")

    html = response.content.decode()
    assert response.context["form"] is None
    assert "ops" in html
    assert 'name="scopes"' not in html
    assert "Revoke" not in html


@pytest.mark.parametrize("role", [Role.VIEWER, Role.TRADER])
def test_members_below_admin_cannot_create_keys(member_client, role):
    client, _ = member_client(role=role)

    response = client.post("/api-keys/", {"name": "sneaky", "scopes": ["read"]})

    assert response.status_code == 403
    assert not ApiKey.objects.exists()


def test_revoking_a_key_stops_it(member_client):
    client, _ = member_client(role=Role.OWNER)
    created = client.post("/api-keys/", {"name": "temp", "scopes": ["read"]})
    secret = _secret_in(created.content.decode())
    api_key = ApiKey.objects.get()

    response = client.post(f"/api-keys/{api_key.id}/revoke/")

    api_key.refresh_from_db()
    assert response.status_code == 302
    assert api_key.revoked_at is not None
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/balances").status_code == 401
    assert "is revoked" in client.get("/api-keys/").content.decode()


def test_trader_cannot_revoke_a_key(member_client):
    client, membership = member_client(role=Role.TRADER)
    owner = MembershipFactory(org=membership.org, role=Role.OWNER)
    api_key = ApiKey.objects.create(
        org=membership.org,
        created_by=owner.user,
        name="ops",
        prefix="abcdef123456",
        scopes=["read"],
    )

    response = client.post(f"/api-keys/{api_key.id}/revoke/")

    api_key.refresh_from_db()
    assert response.status_code == 403
    assert api_key.revoked_at is None


def test_another_orgs_key_cannot_be_revoked(member_client):
    client, _ = member_client(role=Role.OWNER)
    stranger = MembershipFactory(role=Role.OWNER)
    api_key = ApiKey.objects.create(
        org=stranger.org, created_by=stranger.user, name="x", prefix="0123456789ab", scopes=["read"]
    )

    response = client.post(f"/api-keys/{api_key.id}/revoke/")

    api_key.refresh_from_db()
    assert response.status_code == 404
    assert api_key.revoked_at is None
