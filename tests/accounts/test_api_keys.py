"""/api/v1/api-keys: create, list, get and revoke; scopes; the secret shown once; org isolation."""

from datetime import timedelta

import pytest
from django.db import connection
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


def _create(client: APIClient, **payload):
    return client.post("/api/v1/api-keys", {"name": "bot", **payload}, format="json")


def _bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_create_returns_the_secret_and_a_key_that_works(buyer, api_for):
    response = _create(api_for(buyer, scopes=["read", "trade"]), scopes=["read"])
    assert response.status_code == 201
    body = response.json()
    assert body["key"].startswith(f"txk_{body['prefix']}_")
    assert (body["name"], body["scopes"], body["status"]) == ("bot", ["read"], "active")
    assert body["created_by"] == buyer.user.email
    me = _bearer(body["key"]).get("/api/v1/me").json()
    assert (me["org"]["id"], me["scopes"], me["api_key_prefix"]) == (
        buyer.org.id,
        ["read"],
        body["prefix"],
    )


def test_the_secret_is_stored_only_as_its_sha256(buyer, api_for):
    secret = _create(api_for(buyer, scopes=["read", "trade"]), scopes=["read"]).json()["key"]
    secret_part = secret.split("_", 2)[2]  # the secret itself may contain "_"
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        stored = " ".join(str(value) for row in cursor.fetchall() for value in row)
    assert secret_part not in stored
    assert key_digest(secret) in stored


def test_list_and_get_never_show_the_secret(buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    own_id = ApiKey.objects.get().id
    created = _create(client, scopes=["read"]).json()
    listed = client.get("/api/v1/api-keys")
    detail = client.get(f"/api/v1/api-keys/{created['id']}")
    assert listed.status_code == detail.status_code == 200
    assert [item["id"] for item in listed.json()] == [created["id"], own_id]
    assert all("key" not in item for item in listed.json())
    assert "key" not in detail.json()
    assert created["key"] not in listed.content.decode() + detail.content.decode()
    assert detail.json() == {k: v for k, v in created.items() if k != "key"}


def test_using_a_key_records_last_used_at(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    assert ApiKey.objects.get().last_used_at is None
    before = timezone.now()
    client.get("/api/v1/balances")
    last_used_at = ApiKey.objects.get().last_used_at
    assert last_used_at is not None and last_used_at >= before


def test_last_used_at_is_written_at_most_once_a_minute(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    recent = timezone.now() - timedelta(seconds=10)
    ApiKey.objects.update(last_used_at=recent)
    client.get("/api/v1/balances")
    assert ApiKey.objects.get().last_used_at == recent
    stale = timezone.now() - timedelta(minutes=5)
    ApiKey.objects.update(last_used_at=stale)
    client.get("/api/v1/balances")
    assert ApiKey.objects.get().last_used_at > stale


def test_revoke_keeps_the_row_and_the_key_stops_working(buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    created = _create(client, scopes=["read"]).json()
    response = client.delete(f"/api/v1/api-keys/{created['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert ApiKey.objects.filter(pk=created["id"], revoked_at__isnull=False).exists()
    assert _bearer(created["key"]).get("/api/v1/me").status_code == 401


def test_revoking_twice_answers_the_same_and_keeps_the_first_time(buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    key_id = _create(client, scopes=["read"]).json()["id"]
    first = client.delete(f"/api/v1/api-keys/{key_id}")
    second = client.delete(f"/api/v1/api-keys/{key_id}")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == second.json()
    assert ApiKey.objects.filter(pk=key_id).count() == 1


def test_a_key_can_revoke_itself(buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    own_id = ApiKey.objects.get().id
    assert client.delete(f"/api/v1/api-keys/{own_id}").status_code == 200
    assert client.get("/api/v1/me").status_code == 401


def test_a_read_only_key_cannot_top_up(buyer, api_for):
    response = api_for(buyer, scopes=["read"]).post(
        "/api/v1/topups", {"amount": "50.00"}, format="json"
    )
    assert response.status_code == 403
    assert _error(response)["code"] == "permission_denied"
    assert not TopUp.objects.exists()


def test_a_read_only_key_cannot_create_keys_even_for_an_owner(buyer, api_for):
    response = _create(api_for(buyer, scopes=["read"]), scopes=["read"])
    assert response.status_code == 403
    assert _error(response)["code"] == "permission_denied"
    assert ApiKey.objects.count() == 1


def test_a_read_only_key_cannot_revoke_keys(buyer, api_for):
    other = api_for(buyer, scopes=["read", "trade"])
    other_id = ApiKey.objects.get().id
    response = api_for(buyer, scopes=["read"]).delete(f"/api/v1/api-keys/{other_id}")
    assert response.status_code == 403
    assert _error(response)["code"] == "permission_denied"
    assert other.get("/api/v1/me").status_code == 200


def test_a_key_cannot_grant_a_scope_it_does_not_hold(buyer, api_for):
    response = _create(api_for(buyer, scopes=["read", "trade"]), scopes=["read", "payouts"])
    assert response.status_code == 403
    error = _error(response)
    assert error["code"] == "scope_not_allowed"
    assert "payouts" in error["fields"]["scopes"][0]
    assert ApiKey.objects.count() == 1


def test_a_key_may_grant_a_subset_of_its_scopes(buyer, api_for):
    response = _create(api_for(buyer, scopes=["read", "trade"]), scopes=["trade"])
    assert response.status_code == 201
    assert ApiKey.objects.get(pk=response.json()["id"]).scopes == ["trade"]


def test_a_trader_cannot_create_keys(api_for):
    trader = Principal.for_membership(MembershipFactory(role=Role.TRADER))
    owner = Principal.for_membership(MembershipFactory(org=trader.org, role=Role.OWNER))
    client = api_for(owner, scopes=["read", "trade"])
    ApiKey.objects.update(created_by=trader.user)  # the key now acts with the trader's role
    response = _create(client, scopes=["read"])
    assert response.status_code == 403
    assert ApiKey.objects.count() == 1


def test_a_key_of_a_member_demoted_to_viewer_can_only_read(buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    Membership.objects.filter(user=buyer.user, org=buyer.org).update(role=Role.VIEWER)
    assert client.get("/api/v1/balances").status_code == 200
    assert client.get("/api/v1/api-keys").status_code == 200
    topup = client.post("/api/v1/topups", {"amount": "50.00"}, format="json")
    created = _create(client, scopes=["read"])
    revoked = client.delete(f"/api/v1/api-keys/{ApiKey.objects.get().id}")
    assert (topup.status_code, created.status_code, revoked.status_code) == (403, 403, 403)
    assert not TopUp.objects.exists()
    assert ApiKey.objects.get().revoked_at is None


def test_another_orgs_key_is_not_found_rather_than_forbidden(buyer, provider, api_for):
    mine = api_for(buyer, scopes=["read", "trade"])
    api_for(provider, scopes=["read"])
    theirs = ApiKey.objects.get(org=provider.org)
    missing = mine.get("/api/v1/api-keys/999999")
    for response in (
        mine.get(f"/api/v1/api-keys/{theirs.id}"),
        mine.delete(f"/api/v1/api-keys/{theirs.id}"),
    ):
        assert response.status_code == 404
        assert response.json() == missing.json()
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert [item["id"] for item in mine.get("/api/v1/api-keys").json()] == [
        ApiKey.objects.get(org=buyer.org).id
    ]


def test_another_orgs_top_up_is_not_found_rather_than_forbidden(buyer, provider, api_for):
    theirs = TopUp.objects.create(
        org=provider.org,
        amount_micro=10_000_000,
        method=TopUp.Method.PAYMENT_INTENT,
        idempotency_key="their-topup-1",
        request_fingerprint="f",
    )
    mine = api_for(buyer, scopes=["read"])
    response = mine.get(f"/api/v1/topups/{theirs.id}")
    assert response.status_code == 404
    assert response.json() == mine.get("/api/v1/topups/999999").json()
    assert mine.get("/api/v1/topups").json()["results"] == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"scopes": []}, "scopes"),
        ({"scopes": ["admin"]}, "scopes.0"),
        ({"scopes": "read"}, "scopes"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "x" * 81, "scopes": ["read"]}, "name"),
        ({"scopes": ["read"], "expires_at": "yesterday"}, "expires_at"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(buyer, api_for, payload, field):
    response = _create(api_for(buyer, scopes=["read", "trade"]), **payload)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid"
    assert error["fields"][field]
    assert ApiKey.objects.count() == 1


def test_an_expiry_in_the_past_is_refused(buyer, api_for):
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    response = _create(api_for(buyer, scopes=["read", "trade"]), scopes=["read"], expires_at=past)
    assert response.status_code == 400
    assert "expires_at" in _error(response)["fields"]


def test_a_key_with_an_expiry_reports_it_and_expires(buyer, api_for):
    later = timezone.now() + timedelta(hours=1)
    client = api_for(buyer, scopes=["read", "trade"])
    created = _create(client, scopes=["read"], expires_at=later.isoformat()).json()
    assert created["expires_at"] is not None
    ApiKey.objects.filter(pk=created["id"]).update(expires_at=timezone.now())
    assert client.get(f"/api/v1/api-keys/{created['id']}").json()["status"] == "expired"
    assert _bearer(created["key"]).get("/api/v1/me").status_code == 401
