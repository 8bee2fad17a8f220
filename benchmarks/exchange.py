"""What the HTTP benchmarks share: a bench market with a verified provider, funded buyers,
gunicorn on a free loopback port, and latency quantiles. Django must be set up first
(benchmarks.reference.django_setup)."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from benchmarks.reference import ROOT, _process_cpu_s

MODEL = "bench-model"
PASSWORD = "bench-only-password-7f3a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quantile_ms(latencies_s: list[float], quantile: float) -> float:
    """The `quantile` of latencies given in seconds, in milliseconds (0 for none)."""
    if not latencies_s:
        return 0.0
    ordered = sorted(latencies_s)
    return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def start_gunicorn(
    port: int,
    env: dict,
    *,
    workers: int,
    threads: int,
    log_path: Path,
    application: str = "config.wsgi:application",
    extra_args: tuple[str, ...] = (),
) -> subprocess.Popen:
    """gunicorn's gthread workers (keep-alive clients stay connected) on 127.0.0.1:`port`."""
    command = [sys.executable, "-m", "gunicorn", application]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    command += ["--worker-class", "gthread", "--threads", str(threads)]
    command += ["--keep-alive", "60", "--log-level", "warning", "--error-logfile", str(log_path)]
    # No control socket: its default path is one per user, shared with any other gunicorn.
    command += ["--no-control-socket", *extra_args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}; see its log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    stop_server(process)
    raise RuntimeError(f"gunicorn did not start on port {port}")


def stop_server(process: subprocess.Popen) -> None:
    """Stop gunicorn's master, which stops its workers; kill what is left after 20 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # its own process group: the master and its workers
        process.wait(timeout=10)


def bench_market(*, reference_price_micro: int):
    """The bench tier, region and market, created as `manage.py demo_markets` creates them.

    There is no service that creates markets: the operator defines them in the admin.
    """
    from marketplace.models import Market, ModelTier, Region

    tier = ModelTier.objects.create(
        name="Bench",
        slug="bench",
        min_context_tokens=128_000,
        min_output_tokens_per_s=50,
        max_ttft_ms=1_500,
        max_output_tokens=16_384,
        admitted_models=[MODEL],
    )
    region = Region.objects.create(code="bn", name="Bench")
    return Market.objects.create(
        tier=tier,
        region=region,
        symbol="BENCH-BN",
        lot_tokens=1_000_000,
        tick_micro=10_000,
        min_lots=1,
        max_lots=10_000,
        reference_price_micro=reference_price_micro,
        band_bp=2_000,
        output_weight_bp=60_000,
        cache_weight_bp=1_000,
        maker_fee_bp=10,
        taker_fee_bp=25,
        delivery_days=30,
        expiry_policy=Market.ExpiryPolicy.REFUND,
    )


def principal_of(user, org):
    from accounts.models import Membership
    from accounts.principal import Principal

    return Principal.for_membership(
        Membership.objects.select_related("org", "user").get(user=user, org=org)
    )


def bench_provider(*, market):
    """A provider org whose endpoint in `market` is registered and verified by a staff user."""
    from accounts.models import User
    from accounts.services import user_signup
    from marketplace.services import endpoint_register, endpoint_verify

    staff = User.objects.create_superuser("ops@bench.test", PASSWORD)
    user, org = user_signup(
        email="provider@bench.test",
        password=PASSWORD,
        org_name="Bench provider",
        is_buyer=False,
        is_provider=True,
    )
    provider = principal_of(user, org)
    endpoint = endpoint_register(
        principal=provider,
        market_id=market.id,
        base_url="https://provider.bench.test/v1",
        models=[MODEL],
        capacity_tokens_per_day=10**12,
    )
    endpoint_verify(actor=staff, endpoint_id=endpoint.id)
    return provider


def bench_buyer(*, index: int, funding_micro: int):
    """Buyer number `index`, funded as a verified top-up funds it: clearing to available."""
    from django.db import transaction

    from accounts.services import user_signup
    from settlement.models import LedgerAccount, LedgerTransaction
    from settlement.services import ledger_post, org_account, platform_account, transfer

    user, org = user_signup(
        email=f"buyer{index}@bench.test", password=PASSWORD, org_name=f"Bench buyer {index}"
    )
    with transaction.atomic(durable=True):
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING),
                org_account(org_id=org.id, kind=LedgerAccount.Kind.AVAILABLE),
                funding_micro,
            ),
            reference="bench funding",
        )
    return principal_of(user, org)


def server_pids(server_pid: int, url: str) -> tuple[list[int], list[int]]:
    """A server's workers (children of its master process) and the database's backends but ours."""
    try:
        workers = [
            int(pid)
            for pid in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
        ]
    except OSError:
        workers = []
    with psycopg.connect(url, autocommit=True) as conn:
        backends = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
    return workers, backends


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds used so far by each of `pids` that is still running."""
    return {pid: cpu for pid in pids if (cpu := _process_cpu_s(pid)) is not None}


def cpu_used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the processes used between two readings; one that started in between counts whole."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def run_http_clients(
    clients: list, seconds: float, *, gunicorn_pid: int, url: str, patience_s: float
) -> dict:
    """Start the client threads, release them together for `seconds`, and gather what they saw.

    Each client is a thread with `ready` (an Event it sets once warmed up, or on failure),
    `failure`, `deadline` (set here), `latencies_s` and `errors` (counts by label), and waits on
    its `start_event` (one Event shared by all), which is set here. Also reads the CPU that
    gunicorn's workers and the database's backends used in the window, from /proc: what the
    work costs the server, which other load on the machine moves less than the throughput. Both
    are None where /proc is not readable (the server on another host).
    """
    start = clients[0].start_event
    for client in clients:
        client.start()
    for client in clients:
        client.ready.wait(timeout=patience_s)
    failures = [client.failure for client in clients if client.failure]
    if failures:
        start.set()
        raise RuntimeError(f"{len(failures)} client(s) failed to start; the first: {failures[0]}")
    workers, backends = server_pids(gunicorn_pid, url)
    workers_before, backends_before = cpu_by_pid(workers), cpu_by_pid(backends)
    cpu_before = time.process_time()
    started = time.perf_counter()
    for client in clients:
        client.deadline = started + seconds
    start.set()
    for client in clients:
        client.join(timeout=seconds + patience_s)
    elapsed = time.perf_counter() - started
    client_cpu_s = time.process_time() - cpu_before
    workers_after, backends_after = (cpu_by_pid(pids) for pids in server_pids(gunicorn_pid, url))
    errors: dict[str, int] = {}
    for client in clients:
        for status, count in client.errors.items():
            errors[status] = errors.get(status, 0) + count
    return {
        "seconds": elapsed,
        "latencies": sorted(latency for client in clients for latency in client.latencies_s),
        "errors": errors,
        "client_cpu_s": client_cpu_s,
        "gunicorn_cpu_s": cpu_used_s(workers_before, workers_after) if workers_after else None,
        "database_cpu_s": cpu_used_s(backends_before, backends_after) if backends_after else None,
        "failures": [client.failure for client in clients if client.failure],
    }


def cpu_per_unit(run: dict, units: int) -> str:
    """Client / gunicorn / database CPU of `run_http_clients`'s run, in us per unit of work."""

    def per_unit(cpu_s: float | None) -> str:
        return "n/a" if cpu_s is None else f"{1e6 * cpu_s / max(1, units):,.0f}"

    return " / ".join(
        per_unit(run[key]) for key in ("client_cpu_s", "gunicorn_cpu_s", "database_cpu_s")
    )


_profiler = None
_profiler_lock = threading.Lock()


def profiled_application(environ, start_response):
    """The WSGI application under cProfile, one request at a time (`--profile`).

    Each request is profiled in the thread that serves it, and the stats so far are written to
    the file named by BENCH_PROFILE_PATH after each one, so they survive the worker's stop.
    """
    import cProfile

    from config.wsgi import application

    global _profiler
    with _profiler_lock:
        if _profiler is None:
            _profiler = cProfile.Profile()
        _profiler.enable()
        try:
            body = list(application(environ, start_response))
        finally:
            _profiler.disable()
        _profiler.dump_stats(os.environ["BENCH_PROFILE_PATH"])
    return body


def print_profile(path: Path, *, lines: int = 35) -> None:
    import pstats

    print(f"== profile of one gunicorn worker (cumulative), from {path.name}")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(lines)
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(lines)
