"""The relay's OpenAI-compatible HTTP front: a bare ASGI application served by uvicorn.

It answers `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `GET /v1/models`
and hands every other path to the Django application. It is bare ASGI rather than a Django view
because it sits on the hot path of every inference call. On PostgreSQL the usual request (a key
without limits, paid from the balance) is admitted and settled on the event loop in one
statement each (relay.fast_path); every other request takes the ORM path (relay.services), one
hop to a worker thread to admit it (authenticate, route, hold) and one to settle, each worker
thread keeping its own connection. The ORM never runs on the event loop. The provider call is
streamed through with aiohttp on a pooled session. What can wait a moment (booking
pay-as-you-go captures to providers, health observations) is written in batches by a
background task, off the request's path: see relay.captures for why the captures must not be
written per request.

Retries: a connection error, a timeout or a 5xx before the first byte moves on to the next
candidate, at most MAX_ATTEMPTS providers; once a byte went to the client the request stays with
its provider. Whatever happened, the request is settled exactly once.
"""

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from django.db import close_old_connections, connections

from core.errors import ApplicationError
from relay import captures, fast_path, health
from relay.captures import Capture, capture_enqueue, relay_captures_flush
from relay.connections import AsyncConnections
from relay.errors import BadRequest, NoHealthyProvider, RateLimited, RelayError
from relay.models import RelayRequest
from relay.pricing import Tokens
from relay.selectors import model_list
from relay.services import (
    Admission,
    Outcome,
    relay_admit,
    relay_authenticate,
    relay_fund,
    relay_settle,
    request_model,
)
from relay.tokens import prompt_tokens_estimate, tokens_estimate
from settlement.models import relay_request_id_new

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
DB_THREADS = 8
DB_CONNECTIONS = 8
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 60.0
MAX_BODY_BYTES = 4 * 1024 * 1024

# Answers that say the provider, not the buyer's request, is at fault (its keys, its routes, its
# capacity): the next candidate is tried, as for a 5xx. Any other 4xx goes back to the buyer as it
# came, and nothing is charged.
PROVIDER_FAULTS = frozenset({401, 403, 404, 408, 429})

KINDS = {
    "/v1/chat/completions": RelayRequest.Kind.CHAT,
    "/v1/completions": RelayRequest.Kind.COMPLETION,
    "/v1/embeddings": RelayRequest.Kind.EMBEDDING,
}


# What a provider's connection can fail with: refused, reset, cut short, or too slow.
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)


class _Retry(Exception):
    """The attempt failed before any byte reached the client: try the next candidate."""


def _authenticate_and_admit(*, authorization, body, kind, region_code, request_id) -> Admission:
    principal = relay_authenticate(authorization=authorization)
    return relay_admit(
        principal=principal, body=body, kind=kind, region_code=region_code, request_id=request_id
    )


def _models(*, authorization) -> dict:
    relay_authenticate(authorization=authorization)
    return model_list()


def _in_db_thread(function, kwargs):
    # What Django does around each request: drop connections past their age or broken.
    close_old_connections()
    return function(**kwargs)


def _close_connections(barrier) -> None:
    barrier.wait(timeout=10)
    connections.close_all()


class RelayApp:
    def __init__(
        self,
        fallback=None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        db_threads: int | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ):
        self.fallback = fallback
        self.max_attempts = max_attempts
        # SQLite lets one writer in at a time; more threads would only queue on its lock.
        is_sqlite = connections["default"].vendor == "sqlite"
        self.db_threads = db_threads or (1 if is_sqlite else DB_THREADS)
        self.read_timeout_s = read_timeout_s
        self.executor = ThreadPoolExecutor(self.db_threads, thread_name_prefix="relay-db")
        # On PostgreSQL the usual request is admitted and settled on the event loop, one
        # statement each (relay.fast_path); the worker threads do the rest.
        is_postgres = connections["default"].vendor == "postgresql"
        self.pg = AsyncConnections(DB_CONNECTIONS) if is_postgres else None
        # Admissions have connections of their own, so they never queue behind settles.
        self.pg_admit = AsyncConnections(DB_CONNECTIONS) if is_postgres else None
        self.client: aiohttp.ClientSession | None = None
        self.is_flush_due = False
        self.flusher: asyncio.Task | None = None
        self.flush_wanted: asyncio.Event | None = None

    async def db(self, function, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, functools.partial(_in_db_thread, function, kwargs)
        )

    def _client(self) -> aiohttp.ClientSession:
        if self.client is None:
            self.client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=60),
                # No total: a stream lasts as long as it lasts; each read and the connect have
                # their own limit.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self.read_timeout_s
                ),
                # Providers are called directly: a proxy from the environment (HTTP_PROXY and
                # the like) must not sit between the relay and them, loopback ones included.
                trust_env=False,
                # The relay forwards the provider's body as it came; a cookie jar would carry
                # one buyer's provider cookies into another buyer's request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self.client

    def _start_flusher(self) -> None:
        if self.flusher is None:
            self.flush_wanted = asyncio.Event()
            self.flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush_wanted.wait(), captures.FLUSH_EVERY_S)
            self.flush_wanted.clear()
            try:
                await self._flush()
            except Exception:
                # What failed stays queued or held; the next round (or the stale sweep) books it.
                logger.exception("relay background flush failed")

    async def _flush(self) -> None:
        if captures.captures_queued() and self.pg is None:
            await self.db(relay_captures_flush)
        elif captures.captures_queued():
            # One statement on the event loop; what it leaves, the ORM books.
            async with self.pg_admit.connection() as connection:
                left = await captures.relay_captures_flush_fast(connection)
            if left:
                captures.captures_return(left)
                await self.db(captures.relay_captures_flush_known)
        if self.is_flush_due:
            self.is_flush_due = False
            await self.db(health.health_flush)

    async def close(self) -> None:
        """Stop: book what is queued, close the HTTP pool and every DB thread's connection."""
        if self.flusher is not None:
            self.flusher.cancel()
            self.flusher = None
        await self.db(relay_captures_flush)
        await self.db(health.health_flush)
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.pg is not None:
            await self.pg.close()
            await self.pg_admit.close()
        barrier = threading.Barrier(self.db_threads)
        futures = [
            self.executor.submit(_close_connections, barrier) for _ in range(self.db_threads)
        ]
        await asyncio.gather(*(asyncio.wrap_future(future) for future in futures))
        self.executor.shutdown(wait=True)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            return await self.handle(scope, receive, send)
        if self.fallback is None:
            return await _error(send, 404, "not_found", "invalid_request_error", "Not found.")
        return await self.fallback(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        headers = {name.decode("latin-1").lower(): value for name, value in scope["headers"]}
        authorization = headers.get("authorization", b"").decode("latin-1")
        method, path = scope["method"], scope["path"]
        request_id = relay_request_id_new()
        try:
            if path == "/v1/models" and method == "GET":
                models = await self.db(_models, authorization=authorization)
                data = [
                    {"id": model, "object": "model", "owned_by": "exchange", "markets": symbols}
                    for model, symbols in models.items()
                ]
                return await _json(send, 200, {"object": "list", "data": data})
            if path not in KINDS:
                return await _error(send, 404, "not_found", "invalid_request_error", "Not found.")
            if method != "POST":
                return await _error(
                    send, 405, "method_not_allowed", "invalid_request_error", "Use POST."
                )
            body = await _read_json(receive)
            region = headers.get("x-region", b"").decode("latin-1").strip().lower() or None
            admission = None
            if self.pg is not None:
                admission = await self._admit_fast(
                    authorization=authorization,
                    body=body,
                    kind=KINDS[path],
                    region_code=region,
                    request_id=request_id,
                )
            if admission is None:
                admission = await self.db(
                    _authenticate_and_admit,
                    authorization=authorization,
                    body=body,
                    kind=KINDS[path],
                    region_code=region,
                    request_id=request_id,
                )
        except RelayError as error:
            return await _relay_error(send, error)
        except ApplicationError as error:
            return await _error(
                send, int(error.status), error.code, "invalid_request_error", error.message
            )
        self._start_flusher()
        await self.dispatch(admission, body, path, send)

    async def _admit_fast(self, *, authorization, body, kind, region_code, request_id):
        """relay.fast_path's admission, or None for the ORM path to admit the request."""
        model = request_model(body)
        inputs = fast_path.inputs_cached(
            authorization=authorization, model=model, region_code=region_code
        )
        if inputs is None:
            inputs = await self.db(
                fast_path.inputs_load,
                authorization=authorization,
                model=model,
                region_code=region_code,
            )
        if not fast_path.is_eligible(inputs):
            return None
        async with self.pg_admit.connection() as connection:
            return await fast_path.relay_admit_fast(
                connection=connection, inputs=inputs, body=body, kind=kind, request_id=request_id
            )

    async def _settle(self, admission: Admission, outcome: Outcome) -> None:
        if not admission.is_fast:
            await self.db(relay_settle, admission=admission, outcome=outcome)
            return
        async with self.pg.connection() as connection:
            cost = await fast_path.relay_settle_fast(
                connection=connection, admission=admission, outcome=outcome
            )
        if cost is None:
            await self.db(relay_settle, admission=admission, outcome=outcome)
        elif cost:
            # Committed: the cost stays held until relay.captures books it to the provider.
            capture_enqueue(
                Capture(
                    hold_reference=admission.hold_reference,
                    provider_org_id=outcome.provider_org_id,
                    cost_micro=cost,
                    provider_fee_bp=admission.funding.provider_fee_bp,
                )
            )

    async def dispatch(self, admission: Admission, body: dict, path: str, send) -> None:
        started = time.monotonic()
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if admission.is_streamed:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        payload = json.dumps(body).encode()
        attempts = 0
        outcome, finish = Outcome(status=RelayRequest.Status.FAILED), None
        try:
            for candidate in admission.candidates:
                if attempts >= self.max_attempts:
                    break
                if candidate.endpoint_id != admission.funded_endpoint_id:
                    if _is_held_for(admission, candidate):
                        admission.funded_endpoint_id = candidate.endpoint_id
                    elif not await self.db(relay_fund, admission=admission, candidate=candidate):
                        continue
                attempts += 1
                try:
                    outcome, finish = await self.attempt(
                        admission, candidate, path, payload, body, send, client_wants_usage
                    )
                except _Retry:
                    continue
                break
        finally:
            # Settled exactly once, before the client sees the end of the answer.
            outcome.attempts = max(attempts, 1)
            outcome.duration_ms = int((time.monotonic() - started) * 1000)
            await self._settle(admission, outcome)
            if captures.captures_queued() >= captures.FLUSH_AT_CAPTURES:
                self.flush_wanted.set()
        if finish is not None:
            await finish()
        else:
            await _relay_error(
                send,
                NoHealthyProvider(
                    f"{attempts} provider(s) failed or none could be paid for; nothing was charged."
                ),
            )

    def _observe(self, **kwargs) -> None:
        if health.health_observe(**kwargs):
            self.is_flush_due = True

    async def attempt(self, admission, candidate, path, payload, body, send, wants_usage):
        client = self._client()
        url = candidate.base_url + path[len("/v1") :]
        sent_at = time.monotonic()
        # The provider sees the relay's request id, so the usage it reports for this request
        # is matched with the relay's record instead of being metered a second time.
        try:
            response = await client.post(
                url,
                data=payload,
                headers={"content-type": "application/json", "x-request-id": admission.request_id},
            )
        except UPSTREAM_ERRORS:
            self._observe(endpoint_id=candidate.endpoint_id, is_success=False)
            raise _Retry() from None
        try:
            if response.status >= 500 or response.status in PROVIDER_FAULTS:
                self._observe(endpoint_id=candidate.endpoint_id, is_success=False)
                raise _Retry()
            if admission.is_streamed and response.status == 200:
                return await self._stream(
                    admission, candidate, response, body, send, wants_usage, sent_at
                )
            try:
                content = await response.read()
            except UPSTREAM_ERRORS:
                self._observe(endpoint_id=candidate.endpoint_id, is_success=False)
                raise _Retry() from None
        finally:
            response.release()
        ttft_ms = int((time.monotonic() - sent_at) * 1000)
        outcome = Outcome(
            status=RelayRequest.Status.FAILED,
            endpoint_id=candidate.endpoint_id,
            provider_org_id=candidate.provider_org_id,
            ttft_ms=ttft_ms,
        )
        if response.status == 200:
            try:
                answer = json.loads(content)
            except ValueError:
                answer = {}
            tokens, is_estimated, text = _usage_of(answer, body, admission.kind)
            outcome.tokens, outcome.is_estimated = tokens, is_estimated
            is_empty = admission.kind != RelayRequest.Kind.EMBEDDING and not text
            outcome.status = RelayRequest.Status.EMPTY if is_empty else RelayRequest.Status.OK
            if is_empty:
                outcome.tokens = Tokens()
        self._observe(
            endpoint_id=candidate.endpoint_id,
            is_success=True,
            ttft_ms=ttft_ms,
            output_tokens=outcome.tokens.output_tokens,
            generation_ms=ttft_ms,
        )

        async def respond():
            await _raw(
                send,
                response.status,
                content,
                response.headers.get("content-type", "application/json"),
                admission.request_id,
            )

        return outcome, respond

    async def _stream(self, admission, candidate, response, body, send, wants_usage, sent_at):
        chunks = response.content.iter_any()
        try:
            first = await chunks.__anext__()
        except (*UPSTREAM_ERRORS, StopAsyncIteration):
            self._observe(endpoint_id=candidate.endpoint_id, is_success=False)
            raise _Retry() from None
        ttft_ms = int((time.monotonic() - sent_at) * 1000)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", admission.request_id.encode()),
                ],
            }
        )
        usage = None
        text_parts: list[str] = []
        buffer = b""
        is_success, is_done = True, False
        chunk = first
        while True:
            buffer += chunk
            events, _, buffer = buffer.rpartition(b"\n\n")
            if events:
                out = []
                for event in events.split(b"\n\n"):
                    if event.strip() == b"data: [DONE]":
                        is_done = True  # sent after settling, so the client's end means charged
                        continue
                    keep, found_usage = _scan_event(event, text_parts)
                    usage = found_usage or usage
                    if keep or wants_usage:
                        out.append(event + b"\n\n")
                if out:
                    await send(
                        {"type": "http.response.body", "body": b"".join(out), "more_body": True}
                    )
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except UPSTREAM_ERRORS:
                is_success = False
                break
        if buffer.strip():
            await send({"type": "http.response.body", "body": buffer, "more_body": True})
        generation_ms = int((time.monotonic() - sent_at) * 1000) - ttft_ms
        text = "".join(text_parts)
        tokens, is_estimated = _tokens(usage, body, text, admission.kind)
        self._observe(
            endpoint_id=candidate.endpoint_id,
            is_success=is_success,
            ttft_ms=ttft_ms,
            output_tokens=tokens.output_tokens,
            generation_ms=generation_ms,
        )
        outcome = Outcome(
            status=RelayRequest.Status.OK if text else RelayRequest.Status.EMPTY,
            tokens=tokens if text else Tokens(),
            is_estimated=is_estimated,
            endpoint_id=candidate.endpoint_id,
            provider_org_id=candidate.provider_org_id,
            ttft_ms=ttft_ms,
        )

        async def end():
            tail = b"data: [DONE]\n\n" if is_done else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})

        return outcome, end


def _is_held_for(admission: Admission, candidate) -> bool:
    """Whether the pay-as-you-go hold already pays for `candidate` (relay_fund's first case)."""
    funding = admission.funding
    return funding is not None and funding.entitlement_id is None and not candidate.entitlement_ids


def _scan_event(event: bytes, text_parts: list[str]) -> tuple[bool, dict | None]:
    """Read one server-sent event: collect its text; (forward it?, the usage it carries)."""
    data = event.strip()
    if not data.startswith(b"data:"):
        return True, None
    data = data[5:].strip()
    if data == b"[DONE]":
        return True, None
    try:
        chunk = json.loads(data)
    except ValueError:
        return True, None
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        piece = delta.get("content") if "delta" in choice else choice.get("text")
        if isinstance(piece, str):
            text_parts.append(piece)
    usage = chunk.get("usage")
    # The relay always asks for usage; a client that did not gets no usage-only chunk.
    is_usage_only = bool(usage) and not chunk.get("choices")
    return not is_usage_only, usage if isinstance(usage, dict) else None


def _answer_text(answer: dict) -> str:
    parts = []
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        piece = message.get("content") if "message" in choice else choice.get("text")
        if isinstance(piece, str):
            parts.append(piece)
        elif message.get("tool_calls"):
            parts.append(json.dumps(message["tool_calls"]))
    return "".join(parts)


def _usage_of(answer: dict, body: dict, kind: str) -> tuple[Tokens, bool, str]:
    if kind == RelayRequest.Kind.EMBEDDING:
        text = "embedding" if answer.get("data") else ""
    else:
        text = _answer_text(answer)
    tokens, is_estimated = _tokens(answer.get("usage"), body, text, kind)
    return tokens, is_estimated, text


def _tokens(usage, body: dict, text: str, kind: str) -> tuple[Tokens, bool]:
    """Tokens from the provider's `usage`, or estimated from the text when it sent none."""
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") or 0
        prompt = usage["prompt_tokens"]
        output = usage.get("completion_tokens") or 0
        if isinstance(cached, int) and isinstance(output, int) and 0 <= cached <= prompt:
            return Tokens(
                input_tokens=prompt - cached,
                cached_input_tokens=cached,
                output_tokens=max(output, 0),
            ), False
    output = 0 if kind == RelayRequest.Kind.EMBEDDING else tokens_estimate(text)
    return Tokens(input_tokens=prompt_tokens_estimate(body), output_tokens=output), True


async def _read_json(receive) -> dict:
    chunks, size = [], 0
    while True:
        message = await receive()
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise BadRequest("The request body is too large.")
        chunks.append(part)
        if not message.get("more_body"):
            break
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


async def _raw(send, status: int, content: bytes, content_type: str, request_id: str) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(content)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def _json(send, status: int, payload: dict, extra_headers=()) -> None:
    content = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def _error(send, status, code, kind, message, param=None, extra_headers=()) -> None:
    error = {"message": message, "type": kind, "code": code, "param": param}
    await _json(send, status, {"error": error}, extra_headers)


async def _relay_error(send, error: RelayError) -> None:
    headers = []
    if isinstance(error, RateLimited):
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    if error.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="relay"'))
    await _error(
        send, int(error.status), error.code, error.type, error.message, error.param, headers
    )
