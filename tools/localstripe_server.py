"""Run localstripe (an offline Stripe API) on 127.0.0.1 for the demo and the tests.

localstripe is GPL-3.0, so it only ever runs as this separate process; the application never
imports it. Unlike its own CLI, this launcher binds loopback only, keeps state in memory (no pickle
in /tmp shared between runs), and can point its webhook at the app at start:

    python -m tools.localstripe_server --port 8420 \
        --webhook-url http://127.0.0.1:8000/stripe/webhook/ --webhook-secret whsec_embedded
"""

import argparse
import logging

from aiohttp import web
from localstripe import resources, server, webhooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--webhook-url")
    parser.add_argument("--webhook-secret", default="whsec_embedded")
    args = parser.parse_args()

    resources.store.dump_to_disk = lambda *a, **k: None
    if args.webhook_url:
        webhooks.register_webhook("app", args.webhook_url, args.webhook_secret, None)
    logging.basicConfig(level=logging.INFO)
    print(f"localstripe listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(server.app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
