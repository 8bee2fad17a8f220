"""The project's own OpenAI-compatible upstream, for tests, the demo and benchmarks.

A bare ASGI application (served by uvicorn) that answers `POST /v1/chat/completions` (streamed or
not), `POST /v1/completions`, `POST /v1/embeddings` and `GET /v1/models` like an inference provider.
Its answer is a function of the request body and the seed: the same request gets the same text.
Knobs: latency before the first byte, output speed in tokens per second, a rate of 5xx answers (the
n-th request fails or not by the seeded sequence, so a run can be repeated exactly), and a mode that
leaves `usage` out. `GET /_stats` counts what it served, so tests can see which provider was called.

Token counts follow the relay's rule (relay.tokens: four characters a token) for input, and one
token per generated word for output.
"""

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

from relay.tokens import prompt_tokens_estimate

WORDS = [
    "the",
    "market",
    "clears",
    "at",
    "the",
    "maker",
    "price",
    "while",
    "buyers",
    "draw",
    "tokens",
    "down",
    "against",
    "what",
    "they",
    "bought",
    "and",
    "providers",
    "deliver",
    "capacity",
    "measured",
    "in",
    "billable",
    "tokens",
    "every",
    "hour",
    "of",
    "the",
    "day",
]


@dataclass
class FakeProviderConfig:
    latency_ms: int = 0
    tokens_per_s: float = 0.0  # 0: no pacing
    error_rate: float = 0.0
    include_usage: bool = True
    seed: int = 0
    models: list[str] = field(default_factory=lambda: ["fake-model"])


class FakeProvider:
    """An ASGI app; one instance per listening port."""

    def __init__(self, config: FakeProviderConfig):
        self.config = config
        self.error_rng = random.Random(config.seed)  # noqa: S311 - a repeatable test sequence
        self.requests = 0
        self.failures = 0
        self.paths: dict[str, int] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await self.handle(scope["method"], scope["path"], body, send)

    async def handle(self, method: str, path: str, raw: bytes, send) -> None:
        if method == "GET" and path == "/_stats":
            stats = {"requests": self.requests, "failures": self.failures, "paths": self.paths}
            return await _json(send, 200, stats)
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.config.models]
            return await _json(send, 200, {"object": "list", "data": data})
        handlers = {
            "/v1/chat/completions": self.chat,
            "/v1/completions": self.completion,
            "/v1/embeddings": self.embeddings,
        }
        if method != "POST" or path not in handlers:
            return await _json(send, 404, _error("not found", "invalid_request_error"))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return await _json(send, 400, _error("body is not JSON", "invalid_request_error"))
        if not isinstance(body, dict):
            return await _json(send, 400, _error("body is not an object", "invalid_request_error"))
        self.requests += 1
        self.paths[path] = self.paths.get(path, 0) + 1
        if path == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
            message = "`messages` must be a list"
            return await _json(send, 400, _error(message, "invalid_request_error"))
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000)
        if self.config.error_rate and self.error_rng.random() < self.config.error_rate:
            self.failures += 1
            return await _json(send, 503, _error("fake provider overloaded", "server_error"))
        await handlers[path](body, raw, send)

    def _generate(self, body: dict, raw: bytes) -> tuple[str, list[str], str]:
        # Streamed or not, the same question gets the same answer.
        asked = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        canonical = json.dumps(asked, sort_keys=True)
        digest = hashlib.sha256(f"{self.config.seed}:{canonical}".encode()).hexdigest()
        rng = random.Random(digest)  # noqa: S311 - deterministic fake text, not security
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 64
        limit = limit if isinstance(limit, int) and limit > 0 else 64
        count = min(limit, rng.randint(5, 40))
        words = [rng.choice(WORDS) for _ in range(count)]
        pieces = [words[0]] + [f" {word}" for word in words[1:]]
        finish = "length" if count == limit else "stop"
        return digest[:24], pieces, finish

    def _usage(self, body: dict, completion_tokens: int) -> dict:
        prompt_tokens = prompt_tokens_estimate(body)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def _pace(self, tokens: int) -> None:
        if self.config.tokens_per_s and tokens:
            await asyncio.sleep(tokens / self.config.tokens_per_s)

    async def chat(self, body: dict, raw: bytes, send) -> None:
        await self._text(body, raw, send, chat=True)

    async def completion(self, body: dict, raw: bytes, send) -> None:
        await self._text(body, raw, send, chat=False)

    async def _text(self, body: dict, raw: bytes, send, *, chat: bool) -> None:
        digest, pieces, finish = self._generate(body, raw)
        model = str(body.get("model", "fake-model"))
        created = int(time.time())
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{digest}"
        obj = "chat.completion" if chat else "text_completion"
        usage = self._usage(body, len(pieces))
        if not body.get("stream"):
            await self._pace(len(pieces))
            text = "".join(pieces)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text, "logprobs": None}
            )
            choice["finish_reason"] = finish
            payload = {"id": ident, "object": obj, "created": created, "model": model}
            payload["choices"] = [choice]
            if self.config.include_usage:
                payload["usage"] = usage
            return await _json(send, 200, payload)

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": ident, "object": chunk_obj, "created": created, "model": model}

        def chunk(delta_text: str | None, finish_reason: str | None, first: bool = False) -> dict:
            if chat:
                delta = {} if delta_text is None else {"content": delta_text}
                if first:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            else:
                choice = {"index": 0, "text": delta_text or "", "finish_reason": finish_reason}
                choice["logprobs"] = None
            return {**base, "choices": [choice]}

        for number, piece in enumerate(pieces):
            await self._pace(1)
            await _event(send, chunk(piece, None, first=number == 0))
        await _event(send, chunk(None, finish))
        options = body.get("stream_options") or {}
        if self.config.include_usage and isinstance(options, dict) and options.get("include_usage"):
            await _event(send, {**base, "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def embeddings(self, body: dict, raw: bytes, send) -> None:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for index, item in enumerate(items):
            digest = hashlib.sha256(f"{self.config.seed}:{item}".encode()).digest()
            vector = [round((byte - 128) / 128, 6) for byte in digest[:8]]
            data.append({"object": "embedding", "index": index, "embedding": vector})
        prompt_tokens = prompt_tokens_estimate(body)
        payload = {"object": "list", "data": data, "model": str(body.get("model", "fake-model"))}
        if self.config.include_usage:
            payload["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        await _json(send, 200, payload)


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": None, "param": None}}


async def _json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _event(send, payload: dict) -> None:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})
