"""Serve the fake OpenAI-compatible provider on 127.0.0.1 (tests, the demo, benchmarks)."""

import uvicorn
from django.core.management.base import BaseCommand

from relay.fake_provider import FakeProvider, FakeProviderConfig


class Command(BaseCommand):
    help = "Run a fake OpenAI-compatible inference provider on a local port."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--latency-ms", type=int, default=0, help="Delay before the answer.")
        parser.add_argument("--tokens-per-s", type=float, default=0, help="0 streams at once.")
        parser.add_argument("--error-rate", type=float, default=0.0, help="Share of 503 answers.")
        parser.add_argument("--no-usage", action="store_true", help="Leave `usage` out.")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--models", default="fake-model", help="Comma-separated, for /models.")

    def handle(self, *args, **options):
        config = FakeProviderConfig(
            latency_ms=options["latency_ms"],
            tokens_per_s=options["tokens_per_s"],
            error_rate=options["error_rate"],
            include_usage=not options["no_usage"],
            seed=options["seed"],
            models=[m for m in options["models"].split(",") if m],
        )
        uvicorn.run(
            FakeProvider(config),
            host=options["host"],
            port=options["port"],
            log_level="warning",
            access_log=False,
        )
