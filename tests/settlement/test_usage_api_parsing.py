"""The usage API reads and writes a batch without its serializers, to the same values and wire."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from accounts.models import Scope
from settlement.apis.usage import (
    _DATETIME,
    UsageIngestApi,
    _AnswerRenderer,
    _batch_parse,
    _results_output,
)
from settlement.services import usage_ingest
from settlement.services.usage import UsageInput
from tests.settlement import usage_setup
from tests.settlement.usage_setup import usage

_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

GOOD = {
    "request_id": "req-1",
    "market": "FRONTIER-EU",
    "counterparty": "acme",
    "model": "model-a",
    "input_tokens": 1_200,
    "cached_input_tokens": 800,
    "output_tokens": 350,
    "started_at": "2026-11-25T10:00:00Z",
    "ended_at": "2026-11-25T12:00:04.250+02:00",
    "is_estimated": True,
}


def _by_serializer(data):
    serializer = UsageIngestApi.InputSerializer(data=data)
    if not serializer.is_valid():
        return None
    return (
        [UsageInput(**record) for record in serializer.validated_data["records"]],
        serializer.validated_data.get("source"),
    )


def _without(name: str) -> dict:
    return {key: value for key, value in GOOD.items() if key != name}


@pytest.mark.parametrize(
    "data",
    [
        {"records": [GOOD]},
        {"records": [GOOD, {**GOOD, "request_id": "req-2"}], "source": "provider"},
        {"records": [_without("cached_input_tokens")], "source": "buyer"},
        {"records": [_without("is_estimated")]},
        {"records": [{**GOOD, "input_tokens": -5, "extra": "ignored"}]},
        {"records": [{**GOOD, "started_at": "2026-11-25T10:00:00.123456-05:30"}]},
    ],
)
def test_what_the_quick_reading_takes_it_reads_as_the_serializer_does(data):
    parsed = _batch_parse(data)

    assert parsed is not None
    assert parsed == _by_serializer(data)
    for record, expected in zip(parsed[0], _by_serializer(data)[0], strict=True):
        for name in ("started_at", "ended_at"):
            assert getattr(record, name).utcoffset() == getattr(expected, name).utcoffset()
            assert getattr(record, name).tzinfo == getattr(expected, name).tzinfo


@pytest.mark.parametrize(
    "data",
    [
        [GOOD],
        {"records": []},
        {"records": [GOOD] * 1_001},
        {"records": GOOD},
        {"records": [GOOD], "source": None},
        {"records": [GOOD], "source": "relay"},
        {"records": [None]},
        {"records": [_without("model")]},
        {"records": [_without("started_at")]},
        {"records": [{**GOOD, "request_id": "has space"}]},
        {"records": [{**GOOD, "request_id": "x" * 129}]},
        {"records": [{**GOOD, "market": " FRONTIER-EU"}]},
        {"records": [{**GOOD, "market": "X" * 33}]},
        {"records": [{**GOOD, "model": ""}]},
        {"records": [{**GOOD, "model": "modèle"}]},
        {"records": [{**GOOD, "model": "a\x00b"}]},
        {"records": [{**GOOD, "input_tokens": "12"}]},
        {"records": [{**GOOD, "input_tokens": 12.0}]},
        {"records": [{**GOOD, "output_tokens": True}]},
        {"records": [{**GOOD, "cached_input_tokens": None}]},
        {"records": [{**GOOD, "is_estimated": "true"}]},
        {"records": [{**GOOD, "started_at": "2026-11-25T10:00:00"}]},
        {"records": [{**GOOD, "started_at": "yesterday"}]},
        {"records": [{**GOOD, "ended_at": 1_700_000_000}]},
    ],
)
def test_anything_else_is_left_to_the_serializer(data):
    assert _batch_parse(data) is None


@pytest.mark.django_db
def test_the_results_are_written_as_the_serializer_writes_them(seller, buyer, market, buy):
    buy()
    first = usage(market, buyer.org)
    usage_ingest(principal=seller, records=[first])
    records = [
        first,
        usage(market, buyer.org, input_tokens=-1),
        usage(market, buyer.org, input_tokens=2_500_000, output_tokens=0),
        usage(market, buyer.org, input_tokens=10, output_tokens=0),
    ]

    results = usage_ingest(principal=seller, records=records)

    assert [r.status for r in results] == ["duplicate", "rejected", "accepted", "accepted"]
    assert results[3].record.payg_tokens > 0  # past the entitlement: money on the wire
    body = {"accepted": 2, "duplicates": 1, "rejected": 1, "results": results}
    expected = UsageIngestApi.OutputSerializer(body).data["results"]
    assert _results_output(results) == [dict(result) for result in expected]


@pytest.mark.django_db
def test_a_badly_typed_record_gets_the_serializers_error(seller, buyer, market, api_for):
    client = api_for(seller, scopes=[Scope.USAGE_WRITE])
    now = datetime.now(UTC)
    item = {
        **usage(market, buyer.org)._asdict(),
        "input_tokens": "many",
        "started_at": (now - timedelta(seconds=2)).isoformat(),
        "ended_at": now.isoformat(),
    }

    response = client.post("/api/v1/usage", {"records": [item]}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["fields"] == {"records.0.input_tokens": ["A valid integer is required."]}


def _raw(client, body: bytes):
    return client.post("/api/v1/usage", body, content_type="application/json")


@pytest.mark.django_db
def test_an_integer_past_64_bits_is_read_as_the_json_parser_reads_it(
    seller, buyer, market, buy, api_for
):
    buy()
    client = api_for(seller, scopes=[Scope.USAGE_WRITE])
    now = datetime.now(UTC)
    item = {
        **usage(market, buyer.org)._asdict(),
        "started_at": (now - timedelta(seconds=2)).isoformat(),
        "ended_at": now.isoformat(),
    }
    item["input_tokens"] = "BIG"
    # 2^70 input tokens: the JSON parser reads an int, which the usage check then refuses.
    body = json.dumps({"records": [item]}).replace('"BIG"', str(2**70))

    response = _raw(client, body.encode())

    assert response.status_code == 200, response.json()
    [result] = response.json()["results"]
    assert (result["status"], result["code"]) == ("rejected", "absurd_tokens")


@pytest.mark.django_db
def test_a_body_that_is_not_json_gets_the_json_parsers_error(seller, api_for):
    client = api_for(seller, scopes=[Scope.USAGE_WRITE])

    response = _raw(client, b'{"records": [')

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "malformed_request"
    assert error["message"].startswith("JSON parse error - Expecting value")


@pytest.mark.parametrize(
    "request_id",
    ['req-"quoted"', "req-back\\slash", "req-</script>", "req-\u2028line"],
)
def test_the_answer_is_written_to_the_bytes_the_json_renderer_writes(request_id):
    received_at = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    body = {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 1,
        "results": [
            {
                "index": 0,
                "request_id": request_id,
                "status": "accepted",
                "code": "",
                "message": "",
                "record": {
                    "id": 2**40,
                    "source": "provider",
                    "is_primary": True,
                    "billable_tokens": 1_600,
                    "payg_price": "5.000000",
                    "received_at": _DATETIME.to_representation(received_at),
                },
            },
            {"index": 1, "request_id": "b", "status": "rejected", "record": None},
        ],
    }

    for status in (200, 400):
        context = {"response": Response(status=status)}
        assert _AnswerRenderer().render(body, "application/json", context) == (
            JSONRenderer().render(body, "application/json", context)
        )
