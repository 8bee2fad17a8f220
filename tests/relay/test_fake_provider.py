"""The fake provider answers like an OpenAI-compatible upstream, deterministically."""

import httpx
import openai
import pytest

from relay.fake_provider import FakeProvider, FakeProviderConfig
from relay.tokens import tokens_estimate
from tests.relay.servers import serve

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say something."}]}


@pytest.fixture
def fake():
    def start(**config):
        return serve(FakeProvider(FakeProviderConfig(**config)))

    return start


def test_chat_answer_is_a_function_of_the_request_and_seed(fake):
    with fake(seed=7) as base, fake(seed=8) as other:
        first = httpx.post(f"{base}/v1/chat/completions", json=CHAT).json()
        again = httpx.post(f"{base}/v1/chat/completions", json=CHAT).json()
        reseeded = httpx.post(f"{other}/v1/chat/completions", json=CHAT).json()
    text = first["choices"][0]["message"]["content"]
    assert text == again["choices"][0]["message"]["content"]
    assert text != reseeded["choices"][0]["message"]["content"]
    assert first["usage"]["completion_tokens"] == len(text.split())
    assert first["usage"]["prompt_tokens"] == tokens_estimate("Say something.") + 4


def test_max_tokens_caps_the_completion(fake):
    with fake() as base:
        body = httpx.post(f"{base}/v1/chat/completions", json={**CHAT, "max_tokens": 3}).json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


def test_stream_sends_usage_last_only_when_asked(fake):
    with fake() as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
        chunks = list(
            client.chat.completions.create(
                **CHAT, stream=True, stream_options={"include_usage": True}
            )
        )
        plain = list(client.chat.completions.create(**CHAT, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == len(text.split())
    assert all(chunk.usage is None for chunk in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == text


def test_no_usage_mode_leaves_usage_out(fake):
    with fake(include_usage=False) as base:
        body = httpx.post(f"{base}/v1/completions", json={"model": "m", "prompt": "hi"}).json()
    assert "usage" not in body
    assert body["choices"][0]["text"]


def test_embeddings_and_models(fake):
    with fake(models=["a", "b"]) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
        embedded = client.embeddings.create(model="a", input=["one", "two"])
        models = [model.id for model in client.models.list()]
    assert [item.index for item in embedded.data] == [0, 1]
    assert embedded.data[0].embedding != embedded.data[1].embedding
    assert models == ["a", "b"]


def test_error_rate_fails_the_same_requests_on_every_run(fake):
    def run() -> list[int]:
        with fake(error_rate=0.5, seed=3) as base:
            return [
                httpx.post(f"{base}/v1/chat/completions", json=CHAT).status_code for _ in range(20)
            ]

    first = run()
    assert first == run()
    assert set(first) == {200, 503}
