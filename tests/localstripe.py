"""localstripe as a real HTTP peer for integration tests.

A session-scoped process per test worker on a free loopback port (tools.localstripe_server), and a
per-test fixture that points the app's Stripe settings at it and its webhook at the live server.
localstripe sends each webhook about a second after the event, once: poll, never sleep-and-assert.
"""

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout_s}s")


def poll(predicate: Callable[[], object], *, timeout_s: float = 15.0, every_s: float = 0.1):
    """Call `predicate` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every_s)
    pytest.fail(f"condition not met within {timeout_s}s")


@dataclass(frozen=True)
class LocalStripe:
    api_base: str
    webhook_secret: str


@pytest.fixture(scope="session")
def localstripe_api_base():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.localstripe_server", "--port", str(port)],
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def localstripe(localstripe_api_base, live_server, settings) -> LocalStripe:
    """Stripe settings pointed at localstripe, whose webhook posts to this test's live server."""
    secret = "whsec_localstripe_test"
    settings.STRIPE_API_BASE = localstripe_api_base
    settings.STRIPE_SECRET_KEY = "sk_test_localstripe"
    settings.STRIPE_WEBHOOK_SECRET = secret
    settings.STRIPE_TOPUP_MODE = "payment_intent"
    settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS = True
    response = httpx.post(
        f"{localstripe_api_base}/_config/webhooks/app",
        data={"url": f"{live_server.url}/stripe/webhook/", "secret": secret},
        timeout=10,
    )
    response.raise_for_status()
    yield LocalStripe(api_base=localstripe_api_base, webhook_secret=secret)
    httpx.delete(f"{localstripe_api_base}/_config/data", timeout=10)
