"""The one-statement order placement (marketplace.fast_path) against the Django/DRF path.

Every request goes through WSGI, as a server sends it: once through the fast path's application
and once, for comparison, through Django's handler alone. The fast path only ever answers a
placed order itself; everything else must come back exactly as the Django path answers it.
"""

import threading
import time

import orjson
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection, connections, transaction
from django.test import RequestFactory
from django.utils import timezone

from accounts.models import ApiKey, Membership, Role, Scope
from accounts.services import api_key_create
from marketplace import fast_path
from marketplace.models import Market, Order
from marketplace.tasks import MatchPublisher, market_match_flush, market_match_task
from settlement.models import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.selectors import account_balance
from settlement.services import ledger_check, ledger_post, org_account, platform_account, transfer
from tests.concurrency import race
from tests.marketplace.factories import MarketFactory

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.postgres

FUNDS = 1_000_000_000  # $1,000
BID_10_AT_5_HOLD = 50_125_000  # 10 lots of 1M at $5.00 + the higher fee, 25 bp
# What the middleware and the view add that matters to a client; Date and Server are the server's.
HEADERS = (
    "Content-Type",
    "Content-Length",
    "Allow",
    "Vary",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
    "Strict-Transport-Security",
    "Set-Cookie",
)


class Answer:
    def __init__(self, status: str, headers: list, body: bytes):
        self.status, self.headers, self.body = status, dict(headers), body

    @property
    def status_code(self) -> int:
        return int(self.status.split()[0])

    def json(self):
        return orjson.loads(self.body)

    def relevant(self) -> tuple:
        return self.status, {name: self.headers.get(name) for name in HEADERS}, self.body


class Apps:
    """The fast path in front of Django, and Django alone; each call is one WSGI request."""

    def __init__(self):
        self.django = WSGIHandler()
        self.fast = fast_path.OrderIntakeApplication(self.django)
        self.fell_back = 0

    def _call(self, app, body, key: str | None, headers: dict) -> Answer:
        content_type = headers.pop("Content_Type", "application/json")
        extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
        if key is not None:
            extra["HTTP_AUTHORIZATION"] = f"Bearer {key}"
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        environ = (
            RequestFactory()
            .generic("POST", fast_path.ORDERS_PATH, data=data, content_type=content_type, **extra)
            .environ
        )
        if not environ.get("HTTP_COOKIE"):
            environ.pop("HTTP_COOKIE", None)  # a server sends no empty Cookie header
        seen = {}

        def start_response(status, response_headers, exc_info=None):
            seen["status"], seen["headers"] = status, response_headers

        # As Django's test client does: the test's transaction must survive the request.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = app(environ, start_response)
            content = b"".join(response)
            response.close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        return Answer(seen["status"], seen["headers"], content)

    def post_fast(self, body, key, **headers) -> Answer:
        return self._call(self.fast, body, key, headers)

    def post_django(self, body, key, **headers) -> Answer:
        return self._call(self.django, body, key, headers)


@pytest.fixture(autouse=True)
def fresh_caches():
    for cache in (fast_path._keys, fast_path._markets, fast_path._accounts):
        cache.clear()


@pytest.fixture(autouse=True)
def published(monkeypatch):
    """The match tasks published, by market id, instead of sending them."""
    sent = []
    monkeypatch.setattr(
        market_match_task,
        "apply_async",
        lambda args=None, kwargs=None, **options: sent.append(args[0]),
    )
    yield sent
    assert market_match_flush(5.0)


@pytest.fixture
def apps(monkeypatch):
    apps = Apps()
    django_call = apps.django.__call__

    class Counting(WSGIHandler):
        def __call__(self, environ, start_response):
            apps.fell_back += 1
            return django_call(environ, start_response)

    apps.fast.django_application = Counting()
    return apps


@pytest.fixture
def market(db):
    return MarketFactory()


def key_for(principal, scopes=(Scope.READ, Scope.TRADE)) -> str:
    _, secret = api_key_create(principal=principal, name="bot", scopes=list(scopes))
    return secret


@pytest.fixture
def funded(buyer, fund):
    fund(buyer.org.id, FUNDS)
    return buyer


@pytest.fixture
def key(funded) -> str:
    return key_for(funded)


def bid(in_market: Market, **fields) -> dict:
    body = {"market": in_market.symbol, "side": "buy", "type": "limit", "price": "5.000000"}
    body.update({"lots": 10, **fields})
    return {name: value for name, value in body.items() if value is not None}


def held(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.HELD)


def available(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.AVAILABLE)


# What it answers, against what the DRF path answers


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"client_order_id": "bot-7-0001", "post_only": True, "stp": "expire_both"},
        {"tif": "IOC", "price": "4.5"},  # "4.5" is $4.50
        {"type": "market", "price": None, "tif": "FOK"},
        {"type": "market", "price": None},
    ],
)
def test_a_bid_is_answered_byte_for_byte_as_the_drf_path_answers_it(apps, key, market, fields):
    body = bid(market, **fields)

    placed = apps.post_fast(body, key, Idempotency_Key="fast-key-0001")
    # The Django path answers a retry with the first order, read back from the database.
    replayed = apps.post_django(body, key, Idempotency_Key="fast-key-0001")

    assert apps.fell_back == 0, placed.body
    assert placed.status_code == 201, placed.body
    assert placed.relevant() == replayed.relevant()
    assert Order.objects.count() == 1
    assert ledger_check() == []


def test_a_body_declared_utf_8_takes_the_fast_path(apps, key, market):
    answer = apps.post_fast(bid(market), key, Content_Type="application/json; charset=utf-8")

    assert (answer.status_code, apps.fell_back) == (201, 0)


@pytest.mark.parametrize("content_type", ["application/json; charset=latin-1", "text/plain"])
def test_another_content_type_is_answered_by_the_drf_path(apps, key, market, content_type):
    answer = apps.post_fast(bid(market), key, Content_Type=content_type)

    assert apps.fell_back == 1
    assert answer.status_code in (201, 415)


def test_market_symbols_are_read_case_insensitively(apps, key, market):
    answer = apps.post_fast(bid(market, market=market.symbol.lower()), key)

    assert (answer.status_code, apps.fell_back) == (201, 0)
    assert answer.json()["market"] == market.symbol


def test_the_answer_is_that_of_a_new_order_on_the_drf_path(apps, funded, market, db):
    key = key_for(funded)
    django_order = apps.post_django(bid(market, client_order_id="one"), key)
    fast_order = apps.post_fast(bid(market, client_order_id="two"), key)

    assert apps.fell_back == 0
    assert fast_order.status == django_order.status == "201 Created"
    assert fast_order.headers == {
        **django_order.headers,
        "Content-Length": fast_order.headers["Content-Length"],
    }
    changing = {"id", "client_order_id", "created_at", "updated_at"}
    first, second = django_order.json(), fast_order.json()
    assert {k: v for k, v in first.items() if k not in changing} == {
        k: v for k, v in second.items() if k not in changing
    }
    assert list(first) == list(second)


def _state(order: Order) -> dict:
    """What placing `order` wrote, without the ids and times that differ between two orders."""
    hold = Hold.objects.get(reference=order.hold_reference)
    txn = LedgerTransaction.objects.get(idempotency_key=f"hold:{order.hold_reference}")
    entries = LedgerEntry.objects.filter(transaction=txn).order_by("amount_micro")
    accounts = {a.id: a.kind for a in LedgerAccount.objects.filter(org_id=order.org_id)}
    skip = {"id", "org", "created_by", "client_order_id", "created_at", "updated_at"}
    return {
        "order": {
            f.name: getattr(order, f.attname)
            for f in Order._meta.concrete_fields
            if f.name not in skip
        },
        "hold": (
            hold.reference == f"order:{order.id}",
            hold.amount_micro,
            hold.captured_micro,
            hold.released_micro,
            hold.status,
            hold.closed_at,
            hold.created_at is not None,
        ),
        "transaction": (txn.kind, txn.reference == order.hold_reference, txn.actor_id, txn.reason),
        "entries": [
            (accounts[e.account_id], e.amount_micro, e.balance_after_micro) for e in entries
        ],
        "balances": {
            kind: account_balance(org_id=order.org_id, kind=kind)
            for kind in (Kind.AVAILABLE, Kind.HELD)
        },
    }


def test_it_writes_what_the_orm_path_writes(apps, buyer, fund, market, db):
    other = type(buyer).for_membership(
        Membership.objects.create(
            user=type(buyer.user).objects.create(email="other@buyer.test"),
            org=type(buyer.org).objects.create(name="Other", slug="other"),
            role=Role.OWNER,
        )
    )
    fund(buyer.org.id, FUNDS)
    fund(other.org.id, FUNDS)
    body = bid(market, type="market", price=None, lots=7)
    by_django = apps.post_django(body, key_for(buyer), Idempotency_Key="same-terms-1")
    by_fast = apps.post_fast(body, key_for(other), Idempotency_Key="same-terms-1")

    assert apps.fell_back == 0
    django_order = Order.objects.get(pk=by_django.json()["id"])
    fast_order = Order.objects.get(pk=by_fast.json()["id"])
    assert fast_order.created_by_id == other.user.id
    assert _state(fast_order) == _state(django_order)
    assert ApiKey.objects.get(org=other.org).last_used_at is not None
    assert ledger_check() == []


# Retries and refusals: the Django path answers, as it does today


def test_a_retry_with_the_same_key_returns_the_first_order(apps, key, funded, market, db):
    first = apps.post_fast(bid(market), key, Idempotency_Key="retry-key-01")
    again = apps.post_fast(bid(market), key, Idempotency_Key="retry-key-01")

    assert again.relevant() == first.relevant()
    assert Order.objects.count() == 1
    assert held(funded.org.id) == BID_10_AT_5_HOLD
    assert apps.fell_back == 1  # the retry: the insert found the key, so Django answered


def refusal_is_the_same(apps, body, key, **headers) -> Answer:
    """Post to both; the fast path must answer exactly as Django does, having written nothing."""
    orders, entries = Order.objects.count(), LedgerEntry.objects.count()
    expected = apps.post_django(body, key, **headers)
    fell_back = apps.fell_back
    answer = apps.post_fast(body, key, **headers)
    assert answer.relevant() == expected.relevant()
    assert apps.fell_back == fell_back + 1
    assert (Order.objects.count(), LedgerEntry.objects.count()) == (orders, entries)
    return answer


def test_the_same_key_with_other_terms_is_refused(apps, key, market, db):
    apps.post_fast(bid(market), key, Idempotency_Key="reused-key-1")

    answer = refusal_is_the_same(apps, bid(market, lots=11), key, Idempotency_Key="reused-key-1")

    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "idempotency_key_reused")


def test_a_used_client_order_id_is_refused(apps, key, market, db):
    apps.post_fast(bid(market, client_order_id="dup-1"), key)

    answer = refusal_is_the_same(apps, bid(market, client_order_id="dup-1", lots=3), key)

    assert answer.json()["error"]["code"] == "duplicate_client_order_id"


def test_a_bid_the_balance_does_not_cover_is_refused(apps, buyer, fund, market, db):
    fund(buyer.org.id, BID_10_AT_5_HOLD - 1)
    key = key_for(buyer)

    answer = refusal_is_the_same(apps, bid(market), key)

    assert (answer.status_code, answer.json()["error"]["code"]) == (402, "insufficient_funds")
    assert not Hold.objects.exists()
    assert available(buyer.org.id) == BID_10_AT_5_HOLD - 1


def test_a_halt_is_seen_by_the_next_order(apps, key, market, db):
    assert apps.post_fast(bid(market), key).status_code == 201  # the market is remembered
    Market.objects.filter(pk=market.pk).update(status=Market.Status.HALTED)

    answer = refusal_is_the_same(apps, bid(market), key)

    assert answer.json()["error"]["code"] == "market_halted"
    Market.objects.filter(pk=market.pk).update(status=Market.Status.OPEN)
    assert apps.post_fast(bid(market), key).status_code == 201


def test_a_moved_band_is_seen_by_the_next_order(apps, key, market, db):
    assert apps.post_fast(bid(market, price="4.100000"), key).status_code == 201
    Market.objects.filter(pk=market.pk).update(reference_price_micro=6_000_000)

    answer = refusal_is_the_same(apps, bid(market, price="4.100000"), key)

    assert answer.json()["error"]["code"] == "price_outside_band"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"price": "5.005000"}, "price_off_tick"),
        ({"price": "6.010000"}, "price_outside_band"),
        ({"price": "5.0000001"}, "invalid"),
        ({"price": 5}, "invalid"),
        ({"lots": 1}, "lots_below_min"),
        ({"lots": 101}, "lots_above_max"),
        ({"lots": True}, "invalid"),
        ({"price": None}, "invalid_order"),
        ({"type": "market", "tif": "GTC", "price": None}, "invalid_order"),
        ({"post_only": True, "tif": "IOC"}, "invalid_order"),
        ({"post_only": "maybe"}, "invalid"),
        ({"side": "sell"}, "not_a_seller"),
        ({"side": "hold"}, "invalid"),
        ({"market": "NOPE-XX"}, "market_not_found"),
        ({"market": " padded "}, "market_not_found"),
        ({"client_order_id": ""}, "invalid"),
        ({"stp": "never"}, "invalid"),
    ],
)
def test_what_it_refuses_is_answered_by_the_drf_path(apps, key, market, fields, code):
    answer = refusal_is_the_same(apps, bid(market, **fields), key, Idempotency_Key="odd-one-001")

    assert answer.json()["error"]["code"] == code


@pytest.mark.parametrize("name", ["tif", "stp", "post_only", "lots", "market"])
def test_an_explicit_null_is_answered_by_the_drf_path(apps, key, market, name):
    refusal_is_the_same(apps, {**bid(market), name: None}, key)


@pytest.mark.parametrize(
    "fields", [{"lots": "10"}, {"post_only": "false"}, {"client_order_id": " padded "}]
)
def test_what_drf_converts_is_placed_by_the_drf_path(apps, key, market, fields):
    answer = apps.post_fast(bid(market, **fields), key)

    assert (answer.status_code, apps.fell_back) == (201, 1)
    assert Order.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"market": NaN}', b"\xff\xfe", b'{"lots": 1e400}'],
)
def test_a_body_it_cannot_read_is_answered_by_the_drf_path(apps, key, body, db):
    refusal_is_the_same(apps, body, key)


@pytest.mark.parametrize(
    ("scopes", "code", "status"),
    [((Scope.READ,), "permission_denied", 403), ((Scope.TRADE,), None, 201)],
)
def test_the_key_needs_the_trade_scope(apps, funded, market, scopes, code, status):
    key = key_for(funded, scopes)
    answer = apps.post_fast(bid(market), key)
    assert answer.status_code == status
    if code:
        assert answer.relevant() == apps.post_django(bid(market), key).relevant()
        assert apps.fell_back == 1


@pytest.mark.parametrize(
    ("key", "headers"),
    [
        ("txk_nope", {}),
        ("txk_aaaaaaaaaaaa_wrongsecret", {}),
        (None, {"Authorization": "Basic YTpi"}),
        (None, {}),
    ],
)
def test_a_bad_key_is_refused_as_the_drf_path_refuses_it(apps, funded, market, key, headers):
    key_for(funded)
    answer = refusal_is_the_same(apps, bid(market), key, **headers)
    assert answer.status_code in (401, 403)


def test_a_key_revoked_after_it_was_remembered_is_refused(apps, key, market, db):
    assert apps.post_fast(bid(market), key).status_code == 201
    ApiKey.objects.update(revoked_at=timezone.now())

    answer = refusal_is_the_same(apps, bid(market), key)

    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthenticated")


def test_a_member_demoted_after_the_key_was_remembered_can_no_longer_trade(
    apps, key, funded, market, db
):
    assert apps.post_fast(bid(market), key).status_code == 201
    Membership.objects.filter(pk=funded.membership.pk).update(role=Role.VIEWER)

    answer = refusal_is_the_same(apps, bid(market), key)

    assert answer.status_code == 403


def test_an_ask_is_placed_by_the_drf_path(apps, seller, db, market):
    from tests.marketplace.factories import ProviderEndpointFactory

    ProviderEndpointFactory(org=seller.org, market=market)
    answer = apps.post_fast(bid(market, side="sell"), key_for(seller))

    assert answer.status_code == 201
    assert apps.fell_back == 1


def test_the_statement_fits_the_drivers_parse_cache():
    assert len(fast_path._PLACE) <= 4096


# Under concurrency, on PostgreSQL


@pytest.mark.django_db(transaction=True)
def test_concurrent_bids_from_one_buyer_never_spend_more_than_the_balance(
    apps, buyer, fund, market
):
    bid_2_at_5_hold = 10_025_000
    fund(buyer.org.id, 5 * BID_10_AT_5_HOLD + bid_2_at_5_hold)
    key = key_for(buyer)
    # A first bid: the key, the market and the accounts are remembered from here on.
    assert apps.post_fast(bid(market, lots=2), key).status_code == 201

    results = race(12, lambda i: apps.post_fast(bid(market), key).status_code)

    assert sorted(results) == [201] * 5 + [402] * 7, results
    assert Order.objects.count() == Hold.objects.count() == 6
    assert held(buyer.org.id) == 5 * BID_10_AT_5_HOLD + bid_2_at_5_hold
    assert available(buyer.org.id) == 0
    assert ledger_check() == []


@pytest.mark.django_db(transaction=True)
def test_every_placed_order_is_followed_by_a_match_published_after_it(
    apps, buyer, fund, market, published
):
    fund(buyer.org.id, FUNDS)
    key = key_for(buyer)

    results = race(6, lambda i: apps.post_fast(bid(market, lots=2 + i), key).status_code)

    assert results == [201] * 6
    assert market_match_flush(5.0)
    assert published and set(published) == {market.id}
    assert len(published) <= 6
    assert ledger_check() == []


# The coalescing publisher


def test_a_market_marked_while_its_publish_is_in_flight_is_published_again():
    in_flight, release, sent = threading.Event(), threading.Event(), []

    def publish(market_id):
        sent.append(market_id)
        if len(sent) == 1:
            in_flight.set()
            release.wait(5)

    publisher = MatchPublisher(publish)
    publisher.request(7)
    assert in_flight.wait(5)
    for _ in range(50):  # orders committed while the first publish is under way
        publisher.request(7)
    release.set()

    assert publisher.flush(5)
    assert sent == [7, 7]


def test_a_failed_publish_is_tried_again(monkeypatch):
    monkeypatch.setattr("marketplace.tasks.RETRY_BASE_S", 0.01)
    attempts = []

    def publish(market_id):
        attempts.append(market_id)
        if len(attempts) < 3:
            raise ConnectionError("broker away")

    publisher = MatchPublisher(publish)
    publisher.request(3)

    assert publisher.flush(5)
    assert attempts == [3, 3, 3]


def test_sqlite_keeps_the_django_path(monkeypatch):
    monkeypatch.setattr(connection, "vendor", "sqlite")
    environ = {"PATH_INFO": fast_path.ORDERS_PATH, "REQUEST_METHOD": "POST"}
    assert not fast_path._is_fast_candidate(environ)


@pytest.mark.django_db(transaction=True)
def test_a_balance_spent_while_the_statement_waits_for_it_undoes_the_order(
    apps, buyer, fund, market
):
    fund(buyer.org.id, 2 * BID_10_AT_5_HOLD)
    key = key_for(buyer)
    assert apps.post_fast(bid(market), key).status_code == 201  # remembered from here on
    answers = []

    def place() -> None:
        try:
            answers.append(apps.post_fast(bid(market), key))
        finally:
            connection.close()  # this thread's own

    bidder = threading.Thread(target=place)

    with transaction.atomic():
        # Spend the rest under the account locks; the bid's statement, which saw the balance
        # before this commits, inserts its order and then waits for those locks.
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                platform_account(kind=Kind.STRIPE_CLEARING),
                BID_10_AT_5_HOLD,
            ),
            reference="test-withdrawal",
        )
        bidder.start()
        assert _waits_for_a_lock(), "the bid's statement should be waiting for the accounts"
    bidder.join(30)

    answer = answers[0]
    assert (answer.status_code, answer.json()["error"]["code"]) == (402, "insufficient_funds")
    assert apps.fell_back == 1
    assert Order.objects.count() == Hold.objects.count() == 1
    assert available(buyer.org.id) == 0
    assert ledger_check() == []


def _waits_for_a_lock(timeout_s: float = 10.0) -> bool:
    """Whether another session of this database is waiting for a lock, within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    # A connection of its own, in autocommit: a transaction sees one snapshot of the activity.
    watcher = connections.create_connection("default")
    try:
        with watcher.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0]:
                    return True
                time.sleep(0.05)
    finally:
        watcher.close()
    return False


def test_a_connection_lost_during_the_statement_is_a_500_never_a_second_placement(
    apps, key, market, monkeypatch
):
    """The statement may have committed before the connection went: the client is told 500
    in the API's error shape (a retry with its Idempotency-Key finds the order), and the Django
    path is not tried. The failure is injected at the fast path's own statement call."""
    from django.db import OperationalError

    def lost(params):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(fast_path, "_execute", lost)

    answer = apps.post_fast(bid(market), key, Idempotency_Key="lost-0001")

    assert answer.status_code == 500
    assert orjson.loads(answer.body)["error"]["code"] == "internal_error"
    assert apps.fell_back == 0
    assert Order.objects.count() == 0
