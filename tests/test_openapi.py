"""The OpenAPI schema: it generates cleanly, documents every operation, is served with local-only
docs pages, and the API keeps its promises when schemathesis throws generated requests at it."""

import json
import re

import pytest
import schemathesis
from django.contrib.staticfiles import finders
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from accounts.models import ALL_SCOPES
from accounts.services import api_key_create
from settlement.services import ledger_check

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def _generate() -> dict:
    GENERATOR_STATS.reset()
    schema = SchemaGenerator().get_schema(request=None, public=True)
    # Plain JSON types only, as a client would download it.
    return json.loads(OpenApiJsonRenderer().render(schema))


def _api_operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def test_the_schema_generates_without_warnings_and_validates():
    schema = _generate()
    assert not GENERATOR_STATS, (
        f"drf-spectacular warned: {dict(GENERATOR_STATS._warn_cache)} "
        f"errors: {dict(GENERATOR_STATS._error_cache)}"
    )
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")


def test_every_api_operation_has_an_id_a_tag_and_a_success_response():
    operations = _api_operations(_generate())
    assert len(operations) >= 8
    for path, method, operation in operations:
        label = f"{method.upper()} {path}"
        assert operation.get("operationId"), label
        assert operation.get("tags"), label
        assert any(code.startswith("2") for code in operation.get("responses", {})), label


def test_every_operation_id_is_unique():
    ids = [operation["operationId"] for _, _, operation in _api_operations(_generate())]
    assert len(ids) == len(set(ids))


def test_paged_lists_are_documented_as_pages():
    schema = _generate()
    for path in ("/api/v1/ledger", "/api/v1/topups"):
        ok = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        reference = ok["schema"]["$ref"].rsplit("/", 1)[1]
        properties = schema["components"]["schemas"][reference]["properties"]
        assert {"next", "previous", "results"} <= set(properties), path


@pytest.mark.django_db
def test_the_schema_is_served():
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    served = json.loads(response.content)
    assert "/api/v1/balances" in served["paths"]
    assert served["info"]["title"] == "Token Exchange API"


def _local_assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#]+)"', html)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_the_docs_pages_load_and_use_only_local_assets(url):
    response = APIClient().get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "/api/schema/" in html
    assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html), "a page loads from a CDN"
    assets = _local_assets(html)
    assert assets
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file"


@pytest.mark.django_db
def test_swagger_ui_does_not_send_the_schema_to_the_online_validator():
    html = APIClient().get("/api/docs/").content.decode()
    assert re.search(r'"validatorUrl":\s*null', html)


# Property run: schemathesis generates valid and invalid requests from the schema above and sends
# them through the real WSGI stack, inside the test's database transaction.

_ERROR_KEYS = {"code", "message", "fields"}


@schemathesis.check
def error_has_the_one_shape(ctx, response, case):
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), (
        f"{response.status_code} is not JSON"
    )
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == _ERROR_KEYS, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["fields"], dict), error
    for name, messages in error["fields"].items():
        assert isinstance(messages, list) and all(isinstance(m, str) for m in messages), name
    return None


@pytest.fixture
def same_connection_wsgi():
    """Django's WSGI handler, sharing the test's database connection and transaction.

    The handler closes stale connections at each request's start and end; in a test that would
    close the connection holding the test's transaction, so, like Django's test client, this
    unhooks that for the duration.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def funded_owner_key(buyer, fund) -> str:
    fund(buyer.org.id, 500_000_000)
    _, secret = api_key_create(principal=buyer, name="fuzz", scopes=sorted(ALL_SCOPES))
    return secret


fuzzed = schemathesis.openapi.from_dict(_generate()).include(
    func=lambda ctx: (
        ctx.operation.path.startswith("/api/v1/")
        and (ctx.operation.method == "get" or ctx.operation.path == "/api/v1/api-keys")
    )
)


@pytest.mark.django_db
@fuzzed.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_generated_requests_never_break_the_api_or_the_error_shape(
    case, same_connection_wsgi, funded_owner_key
):
    case.call_and_validate(
        app=same_connection_wsgi,
        headers={"Authorization": f"Bearer {funded_owner_key}"},
        checks=[
            not_a_server_error,
            response_schema_conformance,
            content_type_conformance,
            error_has_the_one_shape,
        ],
    )
    assert ledger_check() == []
