"""Browser-test fixtures: Debian's Chromium driven by Playwright, against the live server.

- `chromium`: one headless Chromium per test module.
- `browser_page`: a fresh page in its own context (own cookies, so each test starts signed
  out) whose relative URLs go to the live server.
Browser tests also need `@pytest.mark.browser`, `@pytest.mark.django_db(transaction=True)` and
`@pytest.mark.xdist_group("browser")` (one Chromium at a time on a small machine).
"""

import pytest

CHROMIUM_PATH = "/usr/bin/chromium"  # Debian's package; Playwright's own browser is never used
# As root Chromium needs --no-sandbox; the rest keep it from reaching outside hosts at start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BROWSER_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium per test module, closed when the module's tests are done.

    While Playwright's sync API is started it keeps an asyncio loop running in this thread, and
    Django refuses ORM calls from a thread with a running loop. These tests are synchronous, so
    the refusal is lifted, and only for as long as Playwright runs.
    """
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        playwright = sync_playwright().start()
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM_PATH, headless=True, args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()
        finally:
            playwright.stop()


@pytest.fixture
def browser_page(chromium, live_server):
    """A page in its own browser context, so each test starts signed out."""
    from playwright.sync_api import expect

    context = chromium.new_context(base_url=live_server.url)
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    expect.set_options(timeout=BROWSER_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()
