"""Who may call what: API keys, scopes, roles, org isolation, and the one error shape."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.keys import key_digest
from accounts.models import ApiKey, Membership, Role
from accounts.principal import Principal
from settlement.models import TopUp
from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    return body["error"]


def test_me_tells_the_key_its_org_role_and_scopes(buyer, api_for):
    body = api_for(buyer, scopes=["read"]).get("/api/v1/me").json()
    assert body["org"]["id"] == buyer.org.id
    assert (body["role"], body["scopes"], body["via"]) == ("owner", ["read"], "api_key")


def test_me_works_for_a_signed_in_portal_session(buyer):
    client = APIClient()
    client.force_login(buyer.user)
    body = client.get("/api/v1/me").json()
    assert (body["org"]["id"], body["via"]) == (buyer.org.id, "session")


def test_no_credentials_is_401_with_a_bearer_challenge():
    response = APIClient().get("/api/v1/balances")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert _error(response)["code"] == "unauthenticated"


@pytest.mark.parametrize("key", ["nonsense", "txk_abc", "txk_0123456789ab_wrongsecret"])
def test_a_malformed_or_unknown_key_is_401(key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = client.get("/api/v1/balances")
    assert response.status_code == 401
    assert _error(response)["code"] == "unauthenticated"


def test_the_right_prefix_with_the_wrong_secret_is_401(buyer, api_for):
    api_for(buyer, scopes=["read"])
    prefix = ApiKey.objects.get().prefix
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer txk_{prefix}_not-the-secret")
    assert client.get("/api/v1/balances").status_code == 401


def test_a_revoked_key_is_401(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    ApiKey.objects.update(revoked_at=timezone.now())
    response = client.get("/api/v1/balances")
    assert response.status_code == 401
    assert "revoked" in _error(response)["message"]


def test_an_expired_key_is_401(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    ApiKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/balances").status_code == 401


def test_a_key_whose_creator_left_the_org_is_401(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    Membership.objects.filter(user=buyer.user, org=buyer.org).delete()
    assert client.get("/api/v1/balances").status_code == 401


def test_a_key_without_read_cannot_read_balances(buyer, api_for):
    response = api_for(buyer, scopes=["trade"]).get("/api/v1/balances")
    assert response.status_code == 403
    assert _error(response)["code"] == "permission_denied"


def test_a_read_only_key_cannot_top_up_or_create_keys(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    topup = client.post("/api/v1/topups", {"amount": "50.00"}, format="json")
    assert topup.status_code == 403
    assert not TopUp.objects.exists()
    key = client.post("/api/v1/api-keys", {"name": "x", "scopes": ["read"]}, format="json")
    assert key.status_code == 201  # the creator is the owner; key management is a role right
    escalate = client.post("/api/v1/api-keys", {"name": "x", "scopes": ["trade"]}, format="json")
    assert escalate.status_code == 403
    assert _error(escalate)["code"] == "scope_not_allowed"


def test_a_viewer_cannot_create_keys_and_their_keys_only_read(api_for):
    viewer = Principal.for_membership(MembershipFactory(role=Role.VIEWER))
    owner = Principal.for_membership(MembershipFactory(org=viewer.org, role=Role.OWNER))
    client = api_for(owner, scopes=["read", "trade"])
    ApiKey.objects.update(created_by=viewer.user)  # the key now acts with the viewer's role
    assert client.get("/api/v1/balances").status_code == 200
    assert client.post("/api/v1/topups", {"amount": "50.00"}, format="json").status_code == 403
    created = client.post("/api/v1/api-keys", {"name": "x", "scopes": ["read"]}, format="json")
    assert created.status_code == 403


def test_the_secret_is_shown_once_and_stored_only_as_a_digest(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    created = client.post("/api/v1/api-keys", {"name": "bot", "scopes": ["read"]}, format="json")
    secret = created.json()["key"]
    stored = ApiKey.objects.get(pk=created.json()["id"])
    assert stored.secret_sha256 == key_digest(secret)
    assert secret not in str(ApiKey.objects.values())
    listed = client.get("/api/v1/api-keys").json()
    assert all("key" not in item for item in listed)
    detail = client.get(f"/api/v1/api-keys/{stored.id}").json()
    assert "key" not in detail


def test_using_a_key_records_when_it_was_last_used(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    assert ApiKey.objects.get().last_used_at is None
    client.get("/api/v1/me")
    assert ApiKey.objects.get().last_used_at is not None


def test_revoking_is_idempotent_and_keeps_the_row(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    created = client.post("/api/v1/api-keys", {"name": "bot", "scopes": ["read"]}, format="json")
    key_id = created.json()["id"]
    first = client.delete(f"/api/v1/api-keys/{key_id}")
    second = client.delete(f"/api/v1/api-keys/{key_id}")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["revoked_at"] == second.json()["revoked_at"]
    assert ApiKey.objects.get(pk=key_id).status == "revoked"


def test_another_orgs_objects_do_not_exist_for_a_key(buyer, provider, api_for):
    mine = api_for(buyer)
    theirs = api_for(provider)
    their_key = theirs.post("/api/v1/api-keys", {"name": "p", "scopes": ["read"]}, format="json")
    their_topup = TopUp.objects.create(
        org=provider.org,
        amount_micro=10_000_000,
        method="payment_intent",
        idempotency_key="x" * 10,
        request_fingerprint="f",
    )
    for response in (
        mine.get(f"/api/v1/api-keys/{their_key.json()['id']}"),
        mine.delete(f"/api/v1/api-keys/{their_key.json()['id']}"),
        mine.get(f"/api/v1/topups/{their_topup.id}"),
    ):
        assert response.status_code == 404
        assert _error(response)["code"] in {"api_key_not_found", "topup_not_found"}
    assert ApiKey.objects.get(pk=their_key.json()["id"]).revoked_at is None
    assert mine.get("/api/v1/topups").json()["results"] == []


def test_unknown_scopes_are_a_field_error(buyer, api_for):
    response = api_for(buyer).post(
        "/api/v1/api-keys", {"name": "x", "scopes": ["admin"]}, format="json"
    )
    assert response.status_code == 400
    assert "scopes.0" in _error(response)["fields"] or "scopes" in _error(response)["fields"]


def test_malformed_json_is_a_400_in_the_error_shape(buyer, api_for):
    response = api_for(buyer).post(
        "/api/v1/api-keys", data="{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert _error(response)["code"] == "malformed_request"


def test_a_wrong_content_type_is_415(buyer, api_for):
    response = api_for(buyer).post("/api/v1/api-keys", data="name=x", content_type="text/plain")
    assert response.status_code == 415
    assert _error(response)["code"] == "unsupported_media_type"


def test_a_wrong_method_is_405(buyer, api_for):
    response = api_for(buyer).put("/api/v1/balances", {}, format="json")
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"


def test_an_unknown_api_url_is_a_json_404():
    response = APIClient().get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"


def test_a_bad_idempotency_key_is_a_field_error(buyer, api_for):
    response = api_for(buyer).post(
        "/api/v1/topups", {"amount": "50.00"}, format="json", HTTP_IDEMPOTENCY_KEY="bad key!"
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in _error(response)["fields"]
    assert not TopUp.objects.exists()
