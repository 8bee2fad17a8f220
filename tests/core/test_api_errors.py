"""Every API failure has one shape, {"error": {"code", "message", "fields"}}, and its status."""

import pytest
from django.urls import path
from rest_framework import exceptions
from rest_framework.test import APIClient
from rest_framework.views import APIView

from core.api import exception_handler
from settlement.models import TopUp

pytestmark = pytest.mark.django_db


class _BrokenApi(APIView):
    required_scope = "read"

    def get(self, request):
        raise RuntimeError("a bug")


# For the 500 test only: the same error handlers as config.urls, and one view that fails.
urlpatterns = [path("api/v1/broken", _BrokenApi.as_view())]
handler500 = "config.handlers.server_error"


def _error(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fields"], dict)
    assert all(
        isinstance(messages, list) and all(isinstance(m, str) for m in messages)
        for messages in error["fields"].values()
    )
    return error


@pytest.fixture
def client(buyer, api_for) -> APIClient:
    return api_for(buyer, scopes=["read", "trade"])


def test_malformed_json_is_400_malformed_request(client):
    response = client.post("/api/v1/api-keys", data="{not json", content_type="application/json")
    assert _error(response, 400)["code"] == "malformed_request"


def test_a_json_body_that_is_not_an_object_is_400_invalid(client):
    response = client.post("/api/v1/api-keys", data="[1, 2]", content_type="application/json")
    error = _error(response, 400)
    assert error["code"] == "invalid"
    assert "dictionary" in error["message"]


def test_a_form_body_is_415(client):
    response = client.post("/api/v1/api-keys", {"name": "x", "scopes": "read"})
    assert _error(response, 415)["code"] == "unsupported_media_type"


def test_a_wrong_method_is_405_and_names_the_allowed_ones(client):
    response = client.put("/api/v1/balances", {}, format="json")
    assert _error(response, 405)["code"] == "method_not_allowed"
    assert "GET" in response["Allow"]


def test_an_unacceptable_accept_header_is_406(client):
    response = client.get("/api/v1/balances", HTTP_ACCEPT="text/html")
    assert _error(response, 406)["code"] == "not_acceptable"


@pytest.mark.parametrize("url", ["/api/v1/no-such-thing", "/api/v2/balances", "/api/"])
def test_an_unknown_api_url_is_a_json_404(url):
    assert _error(APIClient().get(url), 404)["code"] == "not_found"


def test_an_unknown_api_url_is_a_json_404_for_a_key_too(client):
    assert _error(client.post("/api/v1/nothing-here", {}, format="json"), 404)


def test_an_unknown_portal_url_stays_an_html_page():
    response = APIClient().get("/no-such-page/")
    assert response.status_code == 404
    assert "application/json" not in response["Content-Type"]


def test_no_credentials_is_401_in_the_error_shape():
    assert _error(APIClient().get("/api/v1/me"), 401)["code"] == "unauthenticated"


def test_a_missing_scope_is_403_in_the_error_shape(buyer, api_for):
    response = api_for(buyer, scopes=["read"]).post(
        "/api/v1/topups", {"amount": "50.00"}, format="json"
    )
    assert _error(response, 403)["code"] == "permission_denied"


def test_validation_errors_list_a_message_per_field(client):
    response = client.post("/api/v1/api-keys", {"scopes": ["read", "root"]}, format="json")
    error = _error(response, 400)
    assert error["code"] == "invalid"
    assert error["fields"]["name"] == ["This field is required."]
    assert error["fields"]["scopes.1"]


@pytest.mark.parametrize("amount", ["fifty", "50.001", "", "1e3", None])
def test_a_bad_money_amount_is_a_field_error(client, amount):
    response = client.post("/api/v1/topups", {"amount": amount}, format="json")
    error = _error(response, 400)
    assert error["code"] == "invalid"
    assert error["fields"]["amount"]
    assert not TopUp.objects.exists()


def test_a_broken_business_rule_keeps_its_own_code_and_fields(client):
    response = client.post("/api/v1/topups", {"amount": "1.00"}, format="json")
    error = _error(response, 400)
    assert error["code"] == "amount_out_of_range"
    assert error["fields"]["amount"]
    assert not TopUp.objects.exists()


@pytest.mark.parametrize("key", ["bad key!", "short", "x" * 129, "ünïcode-key"])
def test_an_idempotency_key_with_bad_characters_or_length_is_400(client, key):
    response = client.post(
        "/api/v1/topups", {"amount": "50.00"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    error = _error(response, 400)
    assert error["code"] == "invalid"
    assert error["fields"]["Idempotency-Key"]
    assert not TopUp.objects.exists()


def test_throttling_is_429_with_retry_after():
    response = exception_handler(exceptions.Throttled(wait=2.5), {})
    assert response.status_code == 429
    assert response["Retry-After"] == "3"
    assert response.data["error"]["code"] == "throttled"


@pytest.mark.urls(__name__)
def test_an_unhandled_error_under_api_is_a_json_500_that_hides_the_details(buyer, api_for):
    client = api_for(buyer, scopes=["read"])
    client.raise_request_exception = False
    response = client.get("/api/v1/broken")
    error = _error(response, 500)
    assert error["code"] == "internal_error"
    assert "a bug" not in response.content.decode()
