"""`python -m marketplace.matching.replay`: JSON lines in, JSON lines out, nothing else."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.matching import OrderBook
from marketplace.matching.replay import apply_line

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def run_replay(stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "marketplace.matching.replay"],
        input=stdin,
        capture_output=True,
        cwd=PROJECT_ROOT,
        check=True,
        timeout=60,
    )


def test_replay_writes_the_events_of_each_command_as_json_lines():
    commands = [
        {"op": "new", "id": "s1", "org": "a", "side": "sell", "type": "limit", "price": 1200,
         "lots": 5, "tif": "GTC", "post_only": False, "stp": "expire_taker"},
        {"op": "new", "id": "s2", "org": "b", "side": "sell", "type": "limit", "price": 1201,
         "lots": 5},
        {"op": "new", "id": "b1", "org": "c", "side": "buy", "type": "market", "lots": 7,
         "tif": "IOC"},
        {"op": "reduce", "id": "s2", "by": 1},
        {"op": "new", "id": "b2", "org": "b", "side": "buy", "type": "limit", "price": 1201,
         "lots": 9, "stp": "expire_maker"},
        {"op": "cancel", "id": "b2"},
        {"op": "cancel", "id": "b2"},
    ]  # fmt: skip
    stdin = "".join(json.dumps(command) + "\n" for command in commands).encode()
    result = run_replay(stdin)
    assert result.stderr == b""
    assert result.stdout.decode() == (
        '{"event":"accepted","id":"s1"}\n'
        '{"event":"accepted","id":"s2"}\n'
        '{"event":"accepted","id":"b1"}\n'
        '{"event":"trade","taker":"b1","maker":"s1","price":1200,"lots":5}\n'
        '{"event":"trade","taker":"b1","maker":"s2","price":1201,"lots":2}\n'
        '{"event":"reduced","id":"s2","lots":2}\n'
        '{"event":"accepted","id":"b2"}\n'
        '{"event":"expired","id":"s2","lots":2}\n'
        '{"event":"cancelled","id":"b2","lots":9}\n'
        '{"event":"rejected","id":"b2","reason":"unknown_order"}\n'
    )


def test_replay_rejects_malformed_lines_without_a_traceback():
    stdin = b"\n".join(
        [
            b"not json",
            b'{"op": "cancel"}',
            b'{"op": "explode", "id": "x1"}',
            b"\xff\xfe",
            b"[" * 100_000,
            b'{"op": "cancel", "id": "x2"}',
        ]
    )
    result = run_replay(stdin + b"\n")
    assert result.stderr == b""
    assert result.stdout.decode() == (
        '{"event":"rejected","id":null,"reason":"malformed"}\n'
        '{"event":"rejected","id":null,"reason":"malformed"}\n'
        '{"event":"rejected","id":"x1","reason":"malformed"}\n'
        '{"event":"rejected","id":null,"reason":"malformed"}\n'
        '{"event":"rejected","id":null,"reason":"malformed"}\n'
        '{"event":"rejected","id":"x2","reason":"unknown_order"}\n'
    )


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "42",
        '"new"',
        "null",
        '{"id": "x"}',
        '{"op": "new", "id": "x"}',
        '{"op": "new", "id": "x", "org": "a", "side": "buy", "type": "limit", "lots": 1, "px": 1}',
        '{"op": "new", "id": "x", "org": ["a"], "side": "buy", "type": "limit", "lots": 1}',
        '{"op": "new", "id": "x", "org": {}, "side": "buy", "type": "market", "lots": 1}',
        '{"op": "cancel", "id": "x", "by": 1}',
        '{"op": "reduce", "id": "x"}',
    ],
)
def test_a_line_the_book_cannot_be_asked_about_is_malformed(line):
    events = apply_line(OrderBook(), line)
    assert [event.to_dict() for event in events] == [
        {"event": "rejected", "id": "x" if '"id": "x"' in line else None, "reason": "malformed"}
    ]


@pytest.mark.parametrize(
    ("line", "expected_id"),
    [
        ('{"op": "cancel", "id": true}', None),
        ('{"op": "cancel", "id": 1.5}', None),
        ('{"op": "cancel", "id": ["x"]}', None),
        ('{"op": "cancel", "id": null}', None),
        ('{"op": "cancel", "id": 7, "extra": 1}', 7),
    ],
)
def test_an_id_that_is_not_a_string_or_integer_is_reported_as_null(line, expected_id):
    assert [event.to_dict() for event in apply_line(OrderBook(), line)] == [
        {"event": "rejected", "id": expected_id, "reason": "malformed"}
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"lots": "5"}, "invalid_lots"),
        ({"lots": 2.5}, "invalid_lots"),
        ({"price": "100"}, "invalid_price"),
        ({"price": 100.0}, "invalid_price"),
        ({"side": ["buy"]}, "invalid_side"),
        ({"tif": None}, "invalid_tif"),
        ({"stp": {"mode": "none"}}, "invalid_stp"),
        ({"post_only": 1}, "invalid_post_only"),
    ],
)
def test_wrong_values_get_the_books_own_rejection(fields, reason):
    command = {"op": "new", "id": "x", "org": "a", "side": "buy", "type": "limit", "price": 100}
    command = {"lots": 1, **command, **fields}
    events = apply_line(OrderBook(), json.dumps(command))
    assert [event.to_dict() for event in events] == [
        {"event": "rejected", "id": "x", "reason": reason}
    ]


def test_defaults_are_gtc_no_post_only_and_expire_taker():
    book = OrderBook()
    apply_line(
        book, '{"op":"new","id":"s1","org":"a","side":"sell","type":"limit","price":5,"lots":1}'
    )
    events = apply_line(
        book, '{"op":"new","id":"b1","org":"a","side":"buy","type":"limit","price":4,"lots":1}'
    )
    assert [event.to_dict() for event in events] == [{"event": "accepted", "id": "b1"}]
    assert book.resting("b1") == 1  # GTC: it rests
    events = apply_line(
        book, '{"op":"new","id":"b2","org":"a","side":"buy","type":"limit","price":5,"lots":1}'
    )
    assert [event.to_dict() for event in events][1:] == [
        {"event": "expired", "id": "b2", "lots": 1}  # expire_taker on its own order
    ]
