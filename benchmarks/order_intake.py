"""Orders placed per second over HTTP with API keys, against gunicorn on PostgreSQL, beside pgbench.

The project's WSGI application runs under gunicorn as its own process, bound to 127.0.0.1 on a
free port, on a scratch database migrated and set up through the project's services: a staff
operator, a provider org whose endpoint in the market is registered and verified, and one funded
buyer org per client with an API key (scopes read and trade). `--clients` threads, each with its
own keep-alive HTTP connection and its own buyer's key, POST limit bids to /api/v1/orders with
a fresh Idempotency-Key for `--seconds`: each answer is a bid validated against the market's
rules, inserted `pending` with its hold in the ledger, and its match task queued after commit
(coalesced per market; kombu's filesystem broker in a temporary folder; no worker runs, so the
figure is intake alone). Only 201 and 200 answers count; anything else is reported as an error.

gunicorn runs `--workers` processes of `--threads` threads (gthread, which keeps connections
alive; the sync worker closes each one). The default for 2 cores is 2 workers of 4 threads:
one process per core, and 8 request slots so that every client is served while others wait on
PostgreSQL, which shares the same 2 cores with the clients.

pgbench's TPC-B (`-c 8 -j 2`, scale 10) runs on the same server before and after the timed run;
the reference is their mean. Target: at least 0.3x. `ledger_check` runs afterwards.

    python -m benchmarks.order_intake [--seconds 20] [--clients 8] [--workers 2] [--threads 4]
"""

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.exchange import (
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
from benchmarks.reference import (
    django_setup,
    pgbench_database,
    scratch_database,
)

TARGET_RATIO = 0.3
FUNDING_MICRO = 10**13
WARM_UP_ORDERS = 20  # per client, before the clock: connections, caches, first queries


def _prepare(clients: int) -> tuple[str, int, int, list[str]]:
    """The market, its verified provider endpoint and funded buyers with keys.

    Returns (symbol, reference price in micro-USD, tick in micro-USD, one API key per client).
    """
    from accounts.models import Scope
    from accounts.services import api_key_create

    market = bench_market(reference_price_micro=5_000_000)
    bench_provider(market=market)
    keys = []
    for index in range(clients):
        buyer = bench_buyer(index=index, funding_micro=FUNDING_MICRO)
        _, secret = api_key_create(principal=buyer, name="bench", scopes=[Scope.READ, Scope.TRADE])
        keys.append(secret)
    return market.symbol, market.reference_price_micro, market.tick_micro, keys


class Client(threading.Thread):
    """One buyer: a keep-alive connection, bids in a loop until the deadline."""

    def __init__(self, index: int, port: int, key: str, market: dict, start: threading.Event):
        super().__init__(name=f"client-{index}", daemon=True)
        self.host, self.port = "127.0.0.1", port
        self.last_body = b""
        self.key = key
        self.market = market
        self.start_event = start
        self.rng = random.Random(index)
        self.deadline = 0.0
        self.latencies_s: list[float] = []
        self.errors: dict[str, int] = {}
        self.failure: str | None = None
        self.ready = threading.Event()

    def _body(self) -> dict:
        market = self.market
        # Bids up to 1 % below the reference price: inside the band, on the tick.
        ticks_below = self.rng.randint(0, market["reference_micro"] // market["tick_micro"] // 100)
        price_micro = market["reference_micro"] - ticks_below * market["tick_micro"]
        return {
            "market": market["symbol"],
            "side": "buy",
            "type": "limit",
            "price": f"{price_micro // 10**6}.{price_micro % 10**6:06d}",
            "lots": self.rng.randint(1, 20),
        }

    def _post(self, http: HTTPConnection) -> int:
        http.request(
            "POST",
            "/api/v1/orders",
            body=orjson.dumps(self._body()),
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/json",
                "Idempotency-Key": f"bench-{uuid.uuid4().hex}",
            },
        )
        response = http.getresponse()
        self.last_body = response.read()
        return response.status

    def run(self) -> None:
        # The standard library's client: the clients share the two cores with the server and
        # the database, and an order's worth of client work is kept as small as it can be.
        http = HTTPConnection(self.host, self.port, timeout=30)
        try:
            for _ in range(WARM_UP_ORDERS):
                status = self._post(http)
                if status not in (200, 201):
                    raise RuntimeError(
                        f"a warm-up order answered {status}: {self.last_body[:300]!r}"
                    )
            self.ready.set()
            self.start_event.wait()
            clock = time.perf_counter
            now = clock()
            while now < self.deadline:
                try:
                    status = self._post(http)
                except (OSError, HTTPException) as error:
                    status = type(error).__name__
                    http.close()  # the next request opens a new connection
                finished = clock()
                if status in (200, 201):
                    self.latencies_s.append(finished - now)
                else:
                    self.errors[str(status)] = self.errors.get(str(status), 0) + 1
                now = finished
        except Exception as error:  # reported by the main thread
            self.failure = f"{type(error).__name__}: {error}"
            self.ready.set()
        finally:
            http.close()


def _load(
    port: int, keys: list[str], market: dict, seconds: float, *, gunicorn_pid: int, url: str
) -> dict:
    """Run one client thread per key for `seconds`, all starting together; with server CPU."""
    start = threading.Event()
    clients = [Client(index, port, key, market, start) for index, key in enumerate(keys)]
    run = run_http_clients(clients, seconds, gunicorn_pid=gunicorn_pid, url=url, patience_s=120)
    return {**run, "orders": len(run["latencies"])}


def _outcome() -> dict:
    from django.db.models import Count

    from marketplace.models import Order
    from settlement.models import Hold
    from settlement.services import ledger_check

    statuses = dict(Order.objects.values_list("status").annotate(n=Count("id")))
    return {
        "orders": sum(statuses.values()),
        "statuses": statuses,
        "holds": Hold.objects.count(),
        "problems": ledger_check(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of the timed run")
    parser.add_argument("--clients", type=int, default=8, help="client threads, one buyer each")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
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

    var_dir = Path(tempfile.mkdtemp(prefix="tx-bench-intake-"))
    (var_dir / "static").mkdir()  # whitenoise warns at start when STATIC_ROOT is missing
    # The server and this process share the broker folder and nothing else on disk.
    os.environ["VAR_DIR"] = str(var_dir)
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.pop("CELERY_TASK_ALWAYS_EAGER", None)
    gunicorn = None
    try:
        with pgbench_database(scale=10) as pgbench, scratch_database("tx_bench_intake") as url:
            django_setup(url, migrate=True)
            from django.db import connections

            symbol, reference_micro, tick_micro, keys = _prepare(args.clients)
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
            )
            market = {
                "symbol": symbol,
                "reference_micro": reference_micro,
                "tick_micro": tick_micro,
            }
            before = pgbench.tps(clients=8, jobs=2, seconds=pgbench_seconds)
            run = _load(
                port,
                keys,
                market,
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
    rate = run["orders"] / run["seconds"] if run["seconds"] else 0.0
    ratio = rate / reference if reference else 0.0
    errors = ", ".join(f"{status}: {n:,}" for status, n in sorted(run["errors"].items())) or "none"
    statuses = outcome["statuses"]
    rows = [
        (f"orders/s, {args.clients} clients over HTTP", f"{rate:,.0f}"),
        ("pgbench TPC-B TPS, -c 8 -j 2 (mean)", f"{reference:,.0f}"),
        ("pgbench before / after", f"{before:,.0f} / {after:,.0f}"),
        (
            "p50 / p99 latency ms",
            f"{quantile_ms(run['latencies'], 0.5):.1f} / {quantile_ms(run['latencies'], 0.99):.1f}",
        ),
        ("orders answered 201/200 / seconds", f"{run['orders']:,} / {run['seconds']:.1f}"),
        ("errors (other answers)", errors),
        ("CPU us/order: client / gunicorn / db", cpu_per_unit(run, run["orders"])),
        ("gunicorn", f"{args.workers} gthread workers x {args.threads} threads"),
        ("orders in the database (+ warm-ups)", f"{outcome['orders']:,}"),
        ("pending / holds", f"{statuses.get('pending', 0):,} / {outcome['holds']:,}"),
        (
            "ledger_check after the run",
            f"{len(outcome['problems'])} BREACHES" if outcome["problems"] else "clean",
        ),
    ]
    print("== order intake (POST /api/v1/orders with API keys, gunicorn, PostgreSQL)")
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
