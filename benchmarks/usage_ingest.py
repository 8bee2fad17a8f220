"""Usage records ingested per second through the batch API, against gunicorn on PostgreSQL.

The project's WSGI application runs under gunicorn as its own process, bound to 127.0.0.1 on a
free port, on a scratch database migrated and set up through the project's services: a staff
operator, a provider org whose endpoint in the market is registered and verified, and one buyer
org per client, funded as a verified top-up funds it, that bought an entitlement of
`--lots-per-buyer` lots from the provider through the engine (an ask, a bid, `market_match`).
`--clients` threads, each with its own keep-alive HTTP connection and its own provider API key
(scope usage:write), POST batches of `--batch` records to /api/v1/usage for `--seconds`: each
client reports the requests the provider served its own buyer, with fresh request ids, so each
batch is validated, inserted, and metered as the primary meter (drawn down against the buyer's
entitlement; pay-as-you-go from the buyer's balance past it) in one transaction. Only records
answered `accepted` count; other answers (a non-200 status, or records rejected or duplicate)
are reported as errors.

gunicorn runs `--workers` processes of `--threads` threads (gthread, which keeps connections
alive). pgbench's TPC-B (`-c 8 -j 2`, scale 10) runs on the same server before and after the
timed run; the reference is their mean. Target: at least 8x. `ledger_check` runs afterwards.

    python -m benchmarks.usage_ingest [--seconds 20] [--clients 4] [--batch 1000]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from benchmarks.exchange import (
    MODEL,
    bench_buyer,
    bench_market,
    bench_provider,
    cpu_per_unit,
    free_port,
    print_profile,
    quantile_ms,
    run_http_clients,
    start_gunicorn,
    stop_server,
)
from benchmarks.reference import django_setup, pgbench_database, scratch_database

TARGET_RATIO = 8.0
FUNDING_MICRO = 10**13
PRICE_MICRO = 5_000_000
WARM_UP_BATCHES = 3  # per client, before the clock: connections, caches, first queries
# 1,000 input and 100 output tokens: 1,600 billable tokens a record at the market's weights.
INPUT_TOKENS, OUTPUT_TOKENS = 1_000, 100


def _prepare(clients: int, lots_per_buyer: int) -> tuple[str, list[tuple[str, str]]]:
    """The market, its verified provider, and per client a funded buyer with an entitlement.

    Returns (market symbol, one (provider API key, buyer slug) per client).
    """
    from accounts.models import Scope
    from accounts.services import api_key_create
    from marketplace import engine
    from marketplace.services import order_place
    from settlement.models import Entitlement

    market = bench_market(reference_price_micro=PRICE_MICRO)
    provider = bench_provider(market=market)
    pairs = []
    for index in range(clients):
        buyer = bench_buyer(index=index, funding_micro=FUNDING_MICRO)
        for principal, side in ((provider, "sell"), (buyer, "buy")):
            order_place(
                principal=principal,
                market_id=market.id,
                side=side,
                price_micro=PRICE_MICRO,
                lots=lots_per_buyer,
            )
        engine.market_match(market_id=market.id)
        if not Entitlement.objects.filter(buyer_org=buyer.org).exists():
            raise RuntimeError(f"buyer {index} bought nothing: the engine made no trade")
        # One key per client, as separate reporting processes of the provider would hold.
        _, secret = api_key_create(
            principal=provider, name=f"bench usage {index}", scopes=[Scope.USAGE_WRITE]
        )
        pairs.append((secret, buyer.org.slug))
    return market.symbol, pairs


class Client(threading.Thread):
    """One reporting process of the provider: a keep-alive connection, batches in a loop."""

    def __init__(
        self, index: int, base_url: str, key: str, buyer_slug: str, symbol: str, batch: int, start
    ):
        super().__init__(name=f"client-{index}", daemon=True)
        self.base_url = base_url
        self.key = key
        self.batch = batch
        self.start_event = start
        self.deadline = 0.0
        self.accepted = 0
        self.latencies_s: list[float] = []
        self.errors: dict[str, int] = {}
        self.failure: str | None = None
        self.ready = threading.Event()
        # Every field but the request id and the times is the same in each record.
        self.template = {
            "market": symbol,
            "counterparty": buyer_slug,
            "model": MODEL,
            "input_tokens": INPUT_TOKENS,
            "cached_input_tokens": 0,
            "output_tokens": OUTPUT_TOKENS,
        }

    def _body(self) -> bytes:
        ended = datetime.now(UTC) - timedelta(seconds=1)
        started_at = (ended - timedelta(seconds=2)).isoformat()
        ended_at = ended.isoformat()
        prefix = uuid.uuid4().hex
        records = [
            {
                **self.template,
                "request_id": f"{prefix}-{i}",
                "started_at": started_at,
                "ended_at": ended_at,
            }
            for i in range(self.batch)
        ]
        # orjson, as a reporting process that sends a thousand records a batch would use: the
        # clients share the two cores with the server, so their JSON work is kept small.
        return orjson.dumps({"records": records})

    def _post(self, http) -> tuple[str, int, int]:
        """(status, accepted, not accepted) of one batch."""
        response = http.post(
            "/api/v1/usage", content=self._body(), headers={"Content-Type": "application/json"}
        )
        if response.status_code != 200:
            return str(response.status_code), 0, self.batch
        answer = orjson.loads(response.content)
        return "200", answer["accepted"], answer["duplicates"] + answer["rejected"]

    def run(self) -> None:
        import httpx

        try:
            # trust_env off: no proxy from the environment; every request stays on loopback.
            with httpx.Client(
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {self.key}"},
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=120,
                trust_env=False,
            ) as http:
                for _ in range(WARM_UP_BATCHES):
                    status, accepted, _ = self._post(http)
                    if accepted != self.batch:
                        raise RuntimeError(
                            f"a warm-up batch answered {status} with {accepted} accepted"
                        )
                self.ready.set()
                self.start_event.wait()
                clock = time.perf_counter
                now = clock()
                while now < self.deadline:
                    try:
                        status, accepted, refused = self._post(http)
                    except httpx.HTTPError as error:
                        status, accepted, refused = type(error).__name__, 0, self.batch
                    finished = clock()
                    self.accepted += accepted
                    if status == "200":
                        self.latencies_s.append(finished - now)
                    if refused:
                        label = status if status != "200" else "records not accepted"
                        self.errors[label] = self.errors.get(label, 0) + refused
                    now = finished
        except Exception as error:  # reported by the main thread
            self.failure = f"{type(error).__name__}: {error}"
            self.ready.set()


def _load(
    base_url: str, pairs, symbol: str, batch: int, seconds: float, *, gunicorn_pid: int, url: str
) -> dict:
    """Run one client thread per pair for `seconds`, all starting together; with server CPU."""
    start = threading.Event()
    clients = [
        Client(index, base_url, key, slug, symbol, batch, start)
        for index, (key, slug) in enumerate(pairs)
    ]
    run = run_http_clients(clients, seconds, gunicorn_pid=gunicorn_pid, url=url, patience_s=300)
    return {**run, "records": sum(client.accepted for client in clients)}


def _outcome() -> dict:
    from django.db.models import Count, Sum

    from settlement.models import Entitlement, UsageDraw, UsageRecord
    from settlement.services import ledger_check

    return {
        "records": UsageRecord.objects.count(),
        "draws": UsageDraw.objects.count(),
        "payg": UsageRecord.objects.filter(payg_tokens__gt=0).aggregate(n=Count("id"))["n"],
        "tokens_used": Entitlement.objects.aggregate(n=Sum("tokens_used"))["n"] or 0,
        "tokens_bought": Entitlement.objects.aggregate(n=Sum("tokens_bought"))["n"] or 0,
        "problems": ledger_check(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of the timed run")
    parser.add_argument("--clients", type=int, default=4, help="client threads, one buyer each")
    parser.add_argument("--batch", type=int, default=1_000, help="records per POST (max 1,000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per gunicorn worker")
    parser.add_argument(
        "--lots-per-buyer",
        type=int,
        default=2_000,
        help="lots of 1M tokens each buyer buys; past them usage is pay-as-you-go",
    )
    parser.add_argument(
        "--pgbench-seconds", type=int, default=None, help="each pgbench run (default: --seconds)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="serve from 1 worker of 1 thread under cProfile and print where its time goes",
    )
    args = parser.parse_args()
    if args.profile:
        args.workers = args.threads = 1
    pgbench_seconds = args.pgbench_seconds or max(1, round(args.seconds))

    var_dir = Path(tempfile.mkdtemp(prefix="tx-bench-usage-"))
    (var_dir / "static").mkdir()  # whitenoise warns at start when STATIC_ROOT is missing
    # The server and this process share the broker folder and nothing else on disk.
    os.environ["VAR_DIR"] = str(var_dir)
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.pop("CELERY_TASK_ALWAYS_EAGER", None)
    gunicorn = None
    try:
        with pgbench_database(scale=10) as pgbench, scratch_database("tx_bench_usage") as url:
            django_setup(url, migrate=True)
            from django.db import connections

            symbol, pairs = _prepare(args.clients, args.lots_per_buyer)
            connections.close_all()
            env = {**os.environ, "DATABASE_URL": url, "DEBUG": "false"}
            profile_path = var_dir / "worker.prof"
            if args.profile:
                env["BENCH_PROFILE_PATH"] = str(profile_path)
            port = free_port()
            log_path = var_dir / "gunicorn.log"
            gunicorn = start_gunicorn(
                port,
                env,
                workers=args.workers,
                threads=args.threads,
                log_path=log_path,
                application=(
                    "benchmarks.exchange:profiled_application"
                    if args.profile
                    else "config.wsgi:application"
                ),
                extra_args=("--timeout", "120"),
            )
            before = pgbench.tps(clients=8, jobs=2, seconds=pgbench_seconds)
            run = _load(
                f"http://127.0.0.1:{port}",
                pairs,
                symbol,
                args.batch,
                args.seconds,
                gunicorn_pid=gunicorn.pid,
                url=url,
            )
            after = pgbench.tps(clients=8, jobs=2, seconds=pgbench_seconds)
            stop_server(gunicorn)
            server_log = log_path.read_text().strip() if log_path.exists() else ""
            outcome = _outcome()
            connections.close_all()
            if args.profile and profile_path.exists():
                print_profile(profile_path)
    except BaseException:
        log_path = var_dir / "gunicorn.log"
        if log_path.exists():
            print("gunicorn's log, to the failure:", file=sys.stderr)
            print(log_path.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        if gunicorn is not None:
            stop_server(gunicorn)
        shutil.rmtree(var_dir, ignore_errors=True)

    reference = statistics.fmean([before, after])
    rate = run["records"] / run["seconds"] if run["seconds"] else 0.0
    batches = len(run["latencies"])
    ratio = rate / reference if reference else 0.0
    errors = ", ".join(f"{status}: {n:,}" for status, n in sorted(run["errors"].items())) or "none"
    rows = [
        (f"records/s accepted, {args.clients} clients", f"{rate:,.0f}"),
        ("pgbench TPC-B TPS, -c 8 -j 2 (mean)", f"{reference:,.0f}"),
        ("pgbench before / after", f"{before:,.0f} / {after:,.0f}"),
        (f"batches/s of {args.batch:,} records", f"{batches / run['seconds']:,.2f}"),
        (
            "p50 / p99 batch latency ms",
            f"{quantile_ms(run['latencies'], 0.5):.1f} / {quantile_ms(run['latencies'], 0.99):.1f}",
        ),
        ("records accepted / seconds", f"{run['records']:,} / {run['seconds']:.1f}"),
        ("errors (records not accepted)", errors),
        ("CPU us/record: client / gunicorn / db", cpu_per_unit(run, run["records"])),
        ("gunicorn", f"{args.workers} gthread workers x {args.threads} threads"),
        ("records in the database (+ warm-ups)", f"{outcome['records']:,}"),
        ("draws / records charged pay-as-you-go", f"{outcome['draws']:,} / {outcome['payg']:,}"),
        (
            "entitlement tokens used / bought",
            f"{outcome['tokens_used']:,} / {outcome['tokens_bought']:,}",
        ),
        (
            "ledger_check after the run",
            f"{len(outcome['problems'])} BREACHES" if outcome["problems"] else "clean",
        ),
    ]
    print("== usage ingest (POST /api/v1/usage, batches, gunicorn, PostgreSQL)")
    for label, value in rows:
        print(f"   {label:<40} {value:>14}")
    verdict = "PASS" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"   {'ratio':<40} {ratio:13.2f}x   target >= {TARGET_RATIO}x   {verdict}")
    for problem in outcome["problems"]:
        print(f"   BREACH: {problem}")
    for failure in run["failures"]:
        print(f"   CLIENT FAILED: {failure}")
    if server_log:
        print("   gunicorn reported:")
        for line in server_log.splitlines()[-10:]:
            print(f"     {line}")


if __name__ == "__main__":
    main()
