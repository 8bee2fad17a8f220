"""Who is let in: API keys in every state, portal sessions, and no credentials at all."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership, User
from tests.accounts.factories import UserFactory

pytestmark = pytest.mark.django_db


def _client_with(authorization: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    return client


def _assert_unauthenticated(response, message_part: str = "") -> None:
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["code"] == "unauthenticated"
    assert message_part in error["message"]


def test_a_request_without_credentials_is_401_with_a_bearer_challenge():
    _assert_unauthenticated(APIClient().get("/api/v1/balances"))


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer nonsense",
        "Bearer txk_",
        "Bearer txk_short_secret",
        "Bearer txk_0123456789ab",
        "Bearer ",
    ],
)
def test_a_malformed_key_is_401(authorization):
    _assert_unauthenticated(_client_with(authorization).get("/api/v1/balances"))


def test_a_well_formed_key_nobody_issued_is_401():
    response = _client_with("Bearer txk_0123456789ab_" + "s" * 43).get("/api/v1/balances")
    _assert_unauthenticated(response, "Invalid API key")


def test_a_known_prefix_with_the_wrong_secret_is_401_and_does_not_count_as_use(buyer, api_for):
    api_for(buyer, scopes=["read"])
    api_key = ApiKey.objects.get()
    response = _client_with(f"Bearer txk_{api_key.prefix}_not-the-secret").get("/api/v1/me")
    _assert_unauthenticated(response, "Invalid API key")
    api_key.refresh_from_db()
    assert api_key.last_used_at is None


def test_another_auth_scheme_is_not_taken_for_a_key():
    _assert_unauthenticated(_client_with("Basic YnV5ZXI6cGFzcw==").get("/api/v1/balances"))


def test_a_revoked_key_is_401(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    ApiKey.objects.update(revoked_at=timezone.now())
    _assert_unauthenticated(client.get("/api/v1/balances"), "revoked")


def test_an_expired_key_is_401(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    ApiKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    _assert_unauthenticated(client.get("/api/v1/balances"), "expired")


def test_a_key_that_expires_later_still_works(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    ApiKey.objects.update(expires_at=timezone.now() + timedelta(hours=1))
    assert client.get("/api/v1/balances").status_code == 200


def test_a_key_whose_creator_left_the_org_is_401(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    Membership.objects.filter(user=buyer.user, org=buyer.org).delete()
    _assert_unauthenticated(client.get("/api/v1/balances"), "no longer belongs")


def test_a_key_whose_creator_was_deactivated_is_401(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    User.objects.filter(pk=buyer.user.pk).update(is_active=False)
    _assert_unauthenticated(client.get("/api/v1/balances"))


def test_a_signed_in_user_without_an_org_is_401():
    client = APIClient()
    client.force_login(UserFactory())
    _assert_unauthenticated(client.get("/api/v1/me"), "does not belong to an org")


def test_a_portal_session_must_send_the_csrf_token_to_write(buyer):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(buyer.user)
    response = client.post("/api/v1/api-keys", {"name": "x", "scopes": ["read"]}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]
    assert not ApiKey.objects.exists()


def test_a_key_needs_no_csrf_token_to_write(buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    client.handler.enforce_csrf_checks = True
    response = client.post("/api/v1/api-keys", {"name": "x", "scopes": ["read"]}, format="json")
    assert response.status_code == 201
