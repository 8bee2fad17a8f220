"""Placing the common order in one PostgreSQL statement, in front of Django's handler.

`POST /api/v1/orders` with an API key went through the middleware stack, DRF's authentication,
permission and serializers, and `order_place`: about ten round trips and six milliseconds of
the web process's CPU an order. For the request most clients send (a bid, limit or market,
JSON, with an API key) `OrderIntakeApplication`, which config.wsgi puts in front of Django's
handler, answers it itself:

- the body is read as DRF would read it, only where that is certain (plain JSON, each field of
  the type the input serializer takes without converting it; anything else goes to DRF);
- the key, its org and membership, the org's ledger accounts and the market come from caches
  of this process, filled once through the same code the Django path runs; each is checked
  against the database in the statement itself (the key still active with the same scopes,
  the member still there with the same role, the market open with the same terms), so a
  change to any of them is seen by the next order;
- the rules are `order_check` and `bid_hold_micro`, the ones `order_place` applies;
- one statement (autocommit: its own transaction) inserts the order `pending`, then, as
  `hold_place` does, locks the buyer's `available` and `held` accounts in ascending id and
  writes the hold's ledger transaction (`hold:order:<id>`), its entries, the new balances and
  the Hold row (`order:<id>`), and notes the key's last use as authentication does;
- the answer is the one the DRF path writes, byte for byte: the body as the output
  serializer and the JSON renderer write it, the same status and headers (tests compare them);
- the match task is published after commit, coalesced per market (marketplace.tasks).

Anything it is not sure about goes to the Django path unchanged, which answers as it always
has: another method, path, content type or auth; a body it does not read the same way; an
unknown market; any rule broken; asks (their capacity check locks the provider's endpoints);
and whatever the statement refused without writing (funds short, a used Idempotency-Key or
client order id, a market halted or changed, a key revoked). The statement writes all of it or
nothing: the order is inserted before the accounts are locked, in the order of `order_place`,
and when the locked balance turns out short after all (spent since the first look at it in the
same statement), the statement fails on purpose and PostgreSQL undoes the order. So a fallback
never finds anything of the fast path's attempt.

SQLite (the embedded mode) always takes the Django path.
"""

import functools
import io
import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC
from functools import partial

import orjson
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.core.signals import request_started
from django.db import DatabaseError, connection, transaction
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from rest_framework.renderers import JSONRenderer

from accounts.authentication import LAST_USED_RESOLUTION, ApiKeyAuthentication
from accounts.keys import key_digest, key_matches, key_parse
from accounts.models import ApiKey, Membership, Org, Scope, User
from core.api import _IDEMPOTENCY_KEY, json_500
from core.errors import ApplicationError
from core.units import UnitError, money_format, money_parse
from marketplace.apis.orders import OrderCollectionApi
from marketplace.apis.wire import MAX_LOTS_ON_THE_WIRE
from marketplace.models import Market, Order
from marketplace.selectors import market_get_by_symbol
from marketplace.services.order_rules import bid_hold_micro, order_check, tif_or_default
from marketplace.services.orders import _fingerprint
from marketplace.tasks import market_match_soon
from settlement.models import Hold, LedgerAccount, LedgerTransaction
from settlement.services.holds import hold_insert_cte
from settlement.services.ledger import (
    ledger_move_ctes,
    model_insert_fields,
    org_accounts,
    row_json,
    sql_minified,
)

logger = logging.getLogger(__name__)

ORDERS_PATH = "/api/v1/orders"
MAX_BODY_BYTES = 16_384  # an order is a few hundred bytes; larger bodies go to Django
CACHE_LIMIT = 10_000  # entries per cache; past it a cache starts again empty

Kind = LedgerAccount.Kind


class NotFast(Exception):
    """This request is for the Django path; nothing was written."""


# The request


@dataclass(frozen=True, slots=True)
class Bid:
    """A bid as OrderCollectionApi.InputSerializer validates it, and its Idempotency-Key."""

    symbol: str
    type: str
    tif: str | None
    price_micro: int | None
    lots: int
    post_only: bool
    stp: str
    client_order_id: str | None
    idempotency_key: str | None


_TYPES = frozenset(Order.Type.values)
_TIFS = frozenset(Order.TimeInForce.values)
_STPS = frozenset(Order.SelfTradePrevention.values)


def _text(value, *, max_length: int) -> str:
    """A text field DRF's CharField keeps as it is: printable ASCII, not blank, not padded.

    CharField trims whitespace and refuses control characters and surrogates; text it would
    change or refuse goes to DRF.
    """
    if (
        type(value) is not str
        or not 0 < len(value) <= max_length
        or not value.isascii()
        or not value.isprintable()
        or value != value.strip()
    ):
        raise NotFast
    return value


def _choice(body: dict, name: str, choices: frozenset, default: str | None) -> str | None:
    """A choice field: its default when absent (an explicit null is DRF's to refuse)."""
    if name not in body:
        return default
    value = body[name]
    if type(value) is not str or value not in choices:
        raise NotFast
    return value


def _bid_read(body, idempotency_key: str | None) -> Bid:
    """The bid in `body`, as the input serializer would validate it; raises NotFast otherwise.

    Only values the serializer takes unconverted are read here (a str for text and choices,
    an int for lots, a bool for post_only, a decimal string or null for the price); the
    serializer converts others ("10" lots, "true") or refuses them, and those go to it.
    Unknown keys are ignored, as the serializer ignores them.
    """
    if type(body) is not dict or body.get("side") != Order.Side.BUY:
        raise NotFast
    price = body.get("price")
    if price is None:
        price_micro = None
    elif type(price) is str:
        try:
            price_micro = money_parse(price)
        except UnitError:
            raise NotFast from None
    else:
        raise NotFast
    lots = body.get("lots")
    if type(lots) is not int or not -MAX_LOTS_ON_THE_WIRE <= lots <= MAX_LOTS_ON_THE_WIRE:
        raise NotFast
    post_only = body.get("post_only", False)
    if type(post_only) is not bool:
        raise NotFast
    client_order_id = body.get("client_order_id")
    if client_order_id is not None:
        client_order_id = _text(client_order_id, max_length=64)
    return Bid(
        symbol=_text(body.get("market"), max_length=32),
        type=_choice(body, "type", _TYPES, Order.Type.LIMIT.value),
        tif=_choice(body, "tif", _TIFS, None),
        price_micro=price_micro,
        lots=lots,
        post_only=post_only,
        stp=_choice(body, "stp", _STPS, Order.SelfTradePrevention.EXPIRE_TAKER.value),
        client_order_id=client_order_id,
        idempotency_key=idempotency_key,
    )


# UTF-8 JSON, which DRF's parser reads with the codec orjson reads (both refuse invalid bytes).
_JSON_CONTENT_TYPES = frozenset({"application/json", "application/json; charset=utf-8"})


def _request_read(environ) -> tuple[WSGIRequest, str, bytes]:
    """The request, its API key and its body, if DRF would take them as this module reads them.

    Raises NotFast for anything else. Once read, the body is put back in `environ` for the
    Django path, should the order go there after all.
    """
    if (
        environ.get("CONTENT_TYPE") not in _JSON_CONTENT_TYPES
        or environ.get("HTTP_ACCEPT", "*/*") not in ("*/*", "application/json")
        or environ.get("QUERY_STRING")  # ?format= and the like are DRF's to read
        or "HTTP_COOKIE" in environ  # a session may change the answer's headers
    ):
        raise NotFast
    keyword, _, raw_key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if keyword != ApiKeyAuthentication.keyword:
        raise NotFast
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise NotFast from None
    if not 0 < length <= MAX_BODY_BYTES:
        raise NotFast
    request = WSGIRequest(environ)
    try:
        request.get_host()  # Django's host check, which CommonMiddleware makes
    except DisallowedHost:
        raise NotFast from None
    body = request.body
    environ["wsgi.input"] = io.BytesIO(body)
    return request, raw_key.strip(), body


def _json_read(body: bytes):
    """The JSON value of `body` where DRF's JSONParser reads the same; raises NotFast otherwise.

    orjson refuses NaN and infinities as DRF's strict parser does, and lone surrogates; it
    reads integers past 64 bits as floats, which no field here takes.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotFast from None


def _idempotency_key(environ) -> str | None:
    raw = environ.get("HTTP_IDEMPOTENCY_KEY")
    if raw is not None and not _IDEMPOTENCY_KEY.match(raw):
        raise NotFast  # DRF answers it with its error
    return raw


# What this process remembers. Nothing here is trusted alone: the statement checks it.


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """An API key that authenticated with scope trade, as the statement checks it is still."""

    api_key_id: int
    digest: str
    scopes: list
    role: str
    org: Org
    user_id: int
    last_used_at: object


_keys: dict[str, KeyFacts] = {}
_markets: dict[str, Market] = {}
_accounts: dict[int, tuple[int, int]] = {}
_cache_lock = threading.Lock()


def _remember(cache: dict, key, value) -> None:
    with _cache_lock:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = value


def _key_facts(raw_key: str) -> KeyFacts:
    """The key's facts, looked up once as ApiKeyAuthentication looks it up; NotFast if refused.

    Any refusal (malformed, unknown, revoked, expired, the member gone, no trade scope) is
    for DRF to word.
    """
    facts = _keys.get(raw_key)
    if facts is not None:
        return facts
    parsed = key_parse(raw_key)
    if parsed is None:
        raise NotFast
    found = ApiKeyAuthentication._key_with_membership(parsed.prefix)
    if found is None or not key_matches(parsed.full_key, found[0].secret_sha256):
        raise NotFast
    api_key, membership = found
    if membership is None or not api_key.is_active_at(timezone.now()):
        raise NotFast
    if Scope.TRADE not in frozenset(api_key.scopes) & membership.scopes:
        raise NotFast
    facts = KeyFacts(
        api_key_id=api_key.id,
        digest=key_digest(parsed.full_key),
        scopes=api_key.scopes,
        role=membership.role,
        org=membership.org,
        user_id=membership.user_id,
        last_used_at=api_key.last_used_at,
    )
    _remember(_keys, raw_key, facts)
    return facts


def _market(symbol: str) -> Market:
    key = symbol.upper()
    market = _markets.get(key)
    if market is None:
        try:
            market = market_get_by_symbol(symbol=key)
        except ApplicationError:
            raise NotFast from None  # DRF answers an unknown market
        _remember(_markets, key, market)
    return market


def _account_ids(org_id: int) -> tuple[int, int]:
    """The org's available and held account ids (rows that never change id once made)."""
    ids = _accounts.get(org_id)
    if ids is None:
        accounts = org_accounts(org_id=org_id, kinds=[Kind.AVAILABLE, Kind.HELD])
        ids = (accounts[Kind.AVAILABLE].id, accounts[Kind.HELD].id)
        _remember(_accounts, org_id, ids)
    return ids


def _forget(raw_key: str, symbol: str, org_id: int) -> None:
    """Drop what the statement found out of date, so the next order reads it again."""
    with _cache_lock:
        _keys.pop(raw_key, None)
        _markets.pop(symbol.upper(), None)
        _accounts.pop(org_id, None)


# The statement

_KEYS, _ORGS = ApiKey._meta.db_table, Org._meta.db_table
_USERS, _MEMBERS = User._meta.db_table, Membership._meta.db_table
_MARKETS, _ORDERS = Market._meta.db_table, Order._meta.db_table
_ACCOUNTS = LedgerAccount._meta.db_table

# The market's terms the rules read: the order is written only while the market is open with
# exactly these, so a halt or a new band is seen by the next order, not when a cache expires.
_MARKET_TERMS = (
    "symbol",
    "lot_tokens",
    "tick_micro",
    "min_lots",
    "max_lots",
    "reference_price_micro",
    "band_bp",
    "maker_fee_bp",
    "taker_fee_bp",
)
_MARKET_ARE_TERMS = " AND ".join(
    f"mk.{Market._meta.get_field(name).column} = %(term_{name})s" for name in _MARKET_TERMS
)

_ORDER_ID = "(SELECT id FROM new_order)"
_HOLD_REFERENCE = f"'order:' || {_ORDER_ID}"  # Order.hold_reference

# hold_place's move from available to held under `hold:order:<id>`, and the Hold row.
_HOLD_MOVE = ledger_move_ctes(
    guard="EXISTS (SELECT FROM new_order)",
    reference=_HOLD_REFERENCE,
    key=f"'hold:' || {_HOLD_REFERENCE}",
)
_HOLD_ROW = hold_insert_cte(reference=_HOLD_REFERENCE)

_PLACE = f"""
    WITH principal AS MATERIALIZED (
        SELECT FROM {_KEYS} AS k
          JOIN {_USERS} AS u ON u.id = k.created_by_id AND u.is_active
          JOIN {_MEMBERS} AS m ON m.org_id = k.org_id AND m.user_id = k.created_by_id
          JOIN {_ORGS} AS o ON o.id = k.org_id
         WHERE k.id = %(api_key)s::bigint AND k.org_id = %(org)s::bigint
           AND k.created_by_id = %(user)s::bigint AND k.secret_sha256 = %(digest)s::text
           AND k.revoked_at IS NULL
           AND (k.expires_at IS NULL OR k.expires_at > %(now)s::timestamptz)
           AND k.scopes = %(scopes)s::jsonb AND m.role = %(role)s::text
           AND o.is_buyer = %(is_buyer)s::boolean AND o.is_provider = %(is_provider)s::boolean
    ), market AS MATERIALIZED (
        SELECT FROM {_MARKETS} AS mk
         WHERE mk.id = %(market)s::bigint AND mk.status = %(market_open)s::text
           AND {_MARKET_ARE_TERMS}
    ), funded AS MATERIALIZED (
        SELECT account.balance_micro >= %(amount)s::bigint AS is_funded
          FROM {_ACCOUNTS} AS account
         WHERE account.id = %(source)s::bigint AND account.org_id = %(org)s::bigint
    ), new_order AS (
        INSERT INTO {_ORDERS} OVERRIDING USER VALUE
        SELECT new_row.* FROM json_populate_record(NULL::{_ORDERS}, %(order)s::json) AS new_row
         WHERE EXISTS (SELECT FROM principal) AND EXISTS (SELECT FROM market)
           AND (SELECT is_funded FROM funded)
        ON CONFLICT DO NOTHING
        RETURNING id
    ), {_HOLD_MOVE}, {_HOLD_ROW}, used AS (
        UPDATE {_KEYS} AS k SET last_used_at = %(now)s::timestamptz
         WHERE k.id = %(api_key)s::bigint AND %(note_use)s::boolean
           AND (k.last_used_at IS NULL OR k.last_used_at < %(used_before)s::timestamptz)
           AND EXISTS (SELECT FROM new_order)
    )
    SELECT EXISTS (SELECT FROM principal), EXISTS (SELECT FROM market), {_ORDER_ID},
           (SELECT ('order ' || id || ' could not be held: undone')::bigint
              FROM new_order WHERE NOT EXISTS (SELECT FROM hold))
"""  # noqa: S608 - table and column names come from our models; every value is a parameter
# The last column fails the statement, undoing the order, when the order went in but its hold
# did not (the balance under the lock no longer covers it): the cast of that text cannot work.
_PLACE = sql_minified(_PLACE)

_ORDER_FIELDS = model_insert_fields(Order)


def _place_params(*, facts: KeyFacts, market: Market, order: Order, now) -> dict:
    available_id, held_id = _account_ids(facts.org.id)
    last_used_at, used_before = facts.last_used_at, now - LAST_USED_RESOLUTION
    return {
        "api_key": facts.api_key_id,
        "org": facts.org.id,
        "user": facts.user_id,
        "digest": facts.digest,
        "now": now,
        "scopes": orjson.dumps(facts.scopes).decode(),
        "role": facts.role,
        "is_buyer": facts.org.is_buyer,
        "is_provider": facts.org.is_provider,
        "market": market.id,
        "market_open": Market.Status.OPEN.value,
        **{f"term_{name}": getattr(market, name) for name in _MARKET_TERMS},
        "order": row_json(_ORDER_FIELDS, order),
        # The hold: hold_place's move from available to held, under its key.
        "source": available_id,
        "destination": held_id,
        "amount": order.hold_micro,
        "kind": LedgerTransaction.Kind.HOLD.value,
        "open": Hold.Status.OPEN.value,
        # As ApiKeyAuthentication notes a use: at most once a minute.
        "note_use": last_used_at is None or last_used_at < used_before,
        "used_before": used_before,
    }


def _execute(params: dict) -> tuple:
    with connection.cursor() as cursor:
        if connection.in_atomic_block:
            # Inside a caller's transaction (tests): a failed statement must not spoil it.
            with transaction.atomic():
                cursor.execute(_PLACE, params)
                row = cursor.fetchone()
        else:
            cursor.execute(_PLACE, params)
            row = cursor.fetchone()
    _last_statement.at = time.monotonic()
    return row


def _order_new(*, facts: KeyFacts, market: Market, bid: Bid) -> Order:
    """The order `order_place` would insert for `bid`, after its rules; NotFast if one breaks."""
    tif = tif_or_default(bid.type, bid.tif)
    fields = {
        "side": Order.Side.BUY.value,
        "type": bid.type,
        "tif": tif,
        "price_micro": bid.price_micro,
        "lots": bid.lots,
        "post_only": bid.post_only,
        "stp": bid.stp,
    }
    try:
        order_check(
            org=facts.org,
            market=market,
            side=Order.Side.BUY,
            order_type=bid.type,
            tif=tif,
            price_micro=bid.price_micro,
            lots=bid.lots,
            post_only=bid.post_only,
            stp=bid.stp,
        )
    except ApplicationError:
        raise NotFast from None
    return Order(
        org=facts.org,
        market=market,
        created_by_id=facts.user_id,
        hold_micro=bid_hold_micro(
            market, side=Order.Side.BUY, price_micro=bid.price_micro, lots=bid.lots
        ),
        client_order_id=bid.client_order_id,
        idempotency_key=bid.idempotency_key,
        request_fingerprint=_fingerprint(
            market_id=market.id, client_order_id=bid.client_order_id, **fields
        ),
        **fields,
    )


def order_place_fast(raw_key: str, bid: Bid) -> Order:
    """Place `bid` in one statement and queue its match; NotFast when nothing was written."""
    facts = _key_facts(raw_key)
    market = _market(bid.symbol)
    order = _order_new(facts=facts, market=market, bid=bid)
    now = timezone.now()
    order.created_at = now
    params = _place_params(facts=facts, market=market, order=order, now=now)
    try:
        is_key_current, is_market_current, order_id, _ = _execute(params)
    except DatabaseError as error:
        if getattr(error.__cause__, "sqlstate", None) is None:
            # The connection failed: the statement may have committed, and placing the order
            # again could place it twice. The client gets a 500, as from a lost COMMIT.
            raise
        # PostgreSQL refused the statement (the balance moved under the lock, the accounts
        # were not the org's): it was undone whole.
        logger.info("order fast path undone, the Django path places it: %s", error)
        _forget(raw_key, bid.symbol, facts.org.id)
        raise NotFast from None
    if order_id is None:
        # Funds short, a used key or client order id, or what was remembered is out of date.
        if not (is_key_current and is_market_current):
            _forget(raw_key, bid.symbol, facts.org.id)
        raise NotFast
    if params["note_use"]:
        _remember(_keys, raw_key, replace(facts, last_used_at=now))
    order.pk = order.id = order_id
    order._state.adding = False
    transaction.on_commit(partial(market_match_soon, market.id))
    return order


# The answer, as the DRF path writes it


def _datetime(value) -> str:
    """A time as DRF's DateTimeField writes it in UTC (settings.TIME_ZONE; a test compares)."""
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _order_body(order: Order) -> bytes:
    """OrderOutputSerializer(order).data rendered by JSONRenderer, for a new pending bid.

    Written out because the serializer's per-field machinery was a tenth of the fast path's
    CPU. Its text is all ASCII (the symbol, the choices, a client order id of printable ASCII
    only), so orjson's compact output is JSONRenderer's, byte for byte; the tests compare them
    and fail when the serializer gains a field this does not write.
    """
    return orjson.dumps(
        {
            "id": order.id,
            "market": order.market.symbol,
            "side": order.side,
            "type": order.type,
            "tif": order.tif,
            "post_only": order.post_only,
            "stp": order.stp,
            "price": None if order.price_micro is None else money_format(order.price_micro),
            "lots": order.lots,
            "filled_lots": order.filled_lots,
            "remaining_lots": order.remaining_lots,
            "reduced_lots": order.reduced_lots,
            "status": order.status,
            "reject_reason": order.reject_reason,
            "hold": money_format(order.hold_micro),
            "client_order_id": order.client_order_id,
            "sequence": order.sequence,
            "created_at": _datetime(order.created_at),
            "updated_at": _datetime(order.updated_at),
        }
    )


def _view_headers() -> dict:
    """The headers the view gives every answer (Allow), as it is set up for a request."""
    view = OrderCollectionApi()
    view.setup(HttpRequest())  # as_view's setup: HEAD is answered as GET, so it is allowed
    return view.default_response_headers


def _passing(request):
    return None


_SECURITY = SecurityMiddleware(_passing)
_FRAMING = XFrameOptionsMiddleware(_passing)


@functools.cache
def _answer_headers(is_secure: bool) -> tuple:
    """The headers the Django path gives a placed order, but its length; by the request's scheme.

    They come from the view (Allow), the session middleware (Vary: every API request reads the
    session), and the clickjacking and security middlewares, which depend on the settings and
    on whether the request is secure (HSTS) only: so they are worked out once per scheme, by
    those middlewares themselves. The common middleware adds the Content-Length.
    """
    request = HttpRequest()
    request.is_secure = lambda: is_secure
    response = HttpResponse(content_type=JSONRenderer.media_type)
    for name, value in _view_headers().items():
        response[name] = value
    patch_vary_headers(response, ("Cookie",))
    response = _SECURITY.process_response(request, _FRAMING.process_response(request, response))
    return tuple((name, value) for name, value in response.items() if name != "Content-Length")


def _created(request: WSGIRequest, order: Order) -> HttpResponse:
    """The 201 answer the DRF path gives, as an HttpResponse (whose close ends the request)."""
    content = _order_body(order)
    response = HttpResponse(content, status=201)
    for name, value in _answer_headers(request.is_secure()):
        response[name] = value
    response["Content-Length"] = str(len(content))
    return response


# A connection used less than this long ago is not pinged before the statement.
PING_IDLE_AFTER_S = 1.0
_last_statement = threading.local()


def _connection_ready(environ) -> None:
    """What Django's handler does first (request_started), less a ping under load.

    request_started resets the query log and drops a connection past its age or broken; with
    health checks on, the next query then pings the server first, a round trip an order. A
    connection this thread used for a statement less than PING_IDLE_AFTER_S ago is known to
    work, so it is not pinged; one idle longer is, as Django would. (If it broke all the same,
    the statement fails and the client gets a 500, never a second placement: see
    order_place_fast.)
    """
    request_started.send(sender=WSGIHandler, environ=environ)
    last = getattr(_last_statement, "at", None)
    is_recent = last is not None and time.monotonic() - last < PING_IDLE_AFTER_S
    if is_recent and connection.connection is not None:
        connection.health_check_done = True


def _is_fast_candidate(environ) -> bool:
    return (
        environ.get("PATH_INFO") == ORDERS_PATH
        and environ.get("REQUEST_METHOD") == "POST"
        and connection.vendor == "postgresql"
    )


class OrderIntakeApplication:
    """WSGI: places the common order itself; every other request goes to `django_application`."""

    def __init__(self, django_application):
        self.django_application = django_application

    def __call__(self, environ, start_response):
        if not _is_fast_candidate(environ):
            return self.django_application(environ, start_response)
        _connection_ready(environ)
        try:
            request, raw_key, body = _request_read(environ)
            if _SECURITY.process_request(request) is not None:
                raise NotFast  # a redirect to HTTPS is Django's to answer
            bid = _bid_read(_json_read(body), _idempotency_key(environ))
            order = order_place_fast(raw_key, bid)
        except NotFast:
            return self.django_application(environ, start_response)
        except Exception:
            # What Django's handler does with an error nobody handled: logged, and answered
            # 500 in the API's error shape (handler500). Never the Django path: the statement
            # may have committed, and the Django path would place the order a second time.
            logger.exception("order fast path failed")
            response = json_500(WSGIRequest(environ))
        else:
            # Placed and committed: from here on, never the Django path (it would place it
            # again).
            response = _created(request, order)
        status = f"{response.status_code} {response.reason_phrase}"
        start_response(status, list(response.items()))
        return response  # the server closes it, which sends request_finished
