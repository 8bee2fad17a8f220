"""What every benchmark shares: scratch databases, Django in a client process, the pgbench
reference, concurrent client processes, and the result block.

Figures on a shared machine move with its load, so a database benchmark measures pgbench's TPC-B
transactions per second on the same PostgreSQL server in the same run (before and after its own
figure) and prints its figure as a ratio of that reference.

The server is the one in BENCH_DATABASE_URL, else DATABASE_URL if it is a PostgreSQL URL, else
postgres://postgres@127.0.0.1:5432/postgres. Scratch databases are created there and dropped
afterwards; nothing else on the server is touched.
"""

import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgres") else DEFAULT_SERVER_URL


def database_url(name: str, base_url: str | None = None) -> str:
    """The URL of database `name` on the same server as `base_url`."""
    parsed = urlparse(base_url or server_url())
    return urlunparse(parsed._replace(path=f"/{name}"))


@contextmanager
def scratch_database(name: str, base_url: str | None = None) -> Iterator[str]:
    """Create an empty database `name`_<pid> on the server, yield its URL, drop it afterwards.

    The process id keeps two scripts run at once (while developing) from dropping each other's
    databases; their figures still measure each other.
    """
    admin_url = base_url or server_url()
    name = f"{name}_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name, admin_url)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def django_setup(url: str, *, migrate: bool = False) -> None:
    """Start Django in this process on database `url`, as production runs it (DEBUG off).

    Migrates the database if asked. Settings the environment already holds are kept.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Measure what production runs: with DEBUG on, Django times and records every query.
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "benchmark-only-" + os.urandom(16).hex())
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


def _debian_pgbench() -> str:
    """Debian keeps pgbench beside its server, off PATH, under the server's major version."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    if not found:
        raise RuntimeError("pgbench is not installed (Debian: apt-get install postgresql-contrib)")
    return str(found[-1])


class Pgbench:
    """pgbench's TPC-B on its own scratch database: initialise once, run as often as needed."""

    def __init__(self, url: str):
        self.url = url
        parsed = urlparse(url)
        self.dbname = parsed.path.lstrip("/")
        executable = shutil.which("pgbench") or _debian_pgbench()
        self.base = [executable, "-h", parsed.hostname or "127.0.0.1"]
        self.base += ["-p", str(parsed.port or 5432)]
        if parsed.username:
            self.base += ["-U", parsed.username]

    def initialise(self, *, scale: int = 10) -> None:
        subprocess.run(
            [*self.base, "-i", "-q", "-s", str(scale), self.dbname],
            check=True,
            capture_output=True,
        )

    def tps(self, *, clients: int = 8, jobs: int = 2, seconds: int = 20) -> float:
        """TPC-B transactions per second, without the connection time."""
        run = subprocess.run(
            [*self.base, "-c", str(clients), "-j", str(jobs), "-T", str(seconds), self.dbname],
            check=True,
            capture_output=True,
            text=True,
        )
        match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", run.stdout)
        if not match:
            raise RuntimeError(f"could not read pgbench's TPS from:\n{run.stdout}")
        return float(match.group(1))


@contextmanager
def pgbench_database(*, scale: int = 10, base_url: str | None = None) -> Iterator[Pgbench]:
    """A scratch database initialised with `pgbench -i -s scale`, dropped afterwards."""
    with scratch_database("tx_bench_pgbench", base_url) as url:
        bench = Pgbench(url)
        bench.initialise(scale=scale)
        yield bench


def pgbench_tps(*, clients: int = 8, jobs: int = 2, seconds: int = 20, scale: int = 10) -> float:
    """TPC-B transactions per second from pgbench on a fresh scratch database."""
    with pgbench_database(scale=scale) as bench:
        return bench.tps(clients=clients, jobs=jobs, seconds=seconds)


@dataclass(frozen=True)
class ClientRun:
    """What `run_clients` measured. CPU figures are None where they could not be read."""

    operations: int
    seconds: float
    latencies_s: list[float]
    client_cpu_s: float
    server_cpu_s: float | None

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def cpu_us_per_operation(self) -> str:
        """Client and database-server CPU per operation, as "client / server" microseconds."""
        if not self.operations:
            return "n/a"
        client = f"{1e6 * self.client_cpu_s / self.operations:,.0f}"
        if self.server_cpu_s is None:
            return f"{client} / n/a"
        return f"{client} / {1e6 * self.server_cpu_s / self.operations:,.0f}"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _backend_pid() -> int | None:
    """The PostgreSQL backend serving this process's Django connection, if it is on this host."""
    try:
        from django.db import connection

        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        return pid if _process_cpu_s(pid) is not None else None
    except Exception:  # no Django here, or a server on another machine: no server figure
        return None


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far, from /proc; None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _client_main(setup, operation, client_index, seconds, barrier, results) -> None:
    try:
        state = setup(client_index)
        for _ in range(20):  # connect, and let the server cache what it caches, before the clock
            operation(state)
        backend_pid = _backend_pid()
        barrier.wait()
        latencies = []
        clock = time.perf_counter
        server_cpu_before = _process_cpu_s(backend_pid) if backend_pid else None
        client_cpu_before = time.process_time()
        started = clock()
        deadline = started + seconds
        now = started
        while now < deadline:
            operation(state)
            finished = clock()
            latencies.append(finished - now)
            now = finished
        client_cpu = time.process_time() - client_cpu_before
        server_cpu_after = _process_cpu_s(backend_pid) if backend_pid else None
        server_cpu = (
            server_cpu_after - server_cpu_before
            if server_cpu_before is not None and server_cpu_after is not None
            else None
        )
        results.put((now - started, latencies, client_cpu, server_cpu, None))
    except BaseException:
        barrier.abort()
        results.put((0.0, [], 0.0, None, traceback.format_exc()))


def run_clients(
    *,
    setup: Callable[[int], object],
    operation: Callable[[object], object],
    clients: int,
    seconds: float,
) -> ClientRun:
    """Run `operation(setup(i))` in a loop in `clients` processes for `seconds`, all at once.

    Processes, not threads: threads would share one interpreter lock. Each client sets up and
    warms up, then all start together at a barrier; the figure counts what finished in the
    window. `setup` and `operation` must be module-level functions (they are pickled). Each
    client also reports the CPU it and its PostgreSQL backend used in the window, which says
    what an operation costs even when other load on the machine moves the throughput.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(clients)
    results = context.Queue()
    processes = [
        context.Process(target=_client_main, args=(setup, operation, i, seconds, barrier, results))
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=seconds + 600) for _ in processes]
    for process in processes:
        process.join()
    errors = [report[4] for report in reports if report[4]]
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; the first:\n{errors[0]}")
    server_cpu = [report[3] for report in reports]
    return ClientRun(
        operations=sum(len(report[1]) for report in reports),
        # The clients start together; the slowest to see its deadline sets the window.
        seconds=max(report[0] for report in reports),
        latencies_s=[latency for report in reports for latency in report[1]],
        client_cpu_s=sum(report[2] for report in reports),
        server_cpu_s=None if None in server_cpu else sum(server_cpu),
    )


def print_result(
    *,
    name: str,
    figure: float,
    unit: str,
    target: float,
    reference: float | None = None,
    reference_label: str = "pgbench TPC-B TPS (same run)",
    details: tuple[tuple[str, str], ...] = (),
) -> bool:
    """The standard result block. With a reference the target is a ratio of it; else absolute."""
    print(f"== {name}")
    print(f"   {unit:<40} {figure:12,.0f}")
    if reference is not None:
        print(f"   {reference_label:<40} {reference:12,.0f}")
    for label, value in details:
        print(f"   {label:<40} {value:>12}")
    if reference is None:
        passed = figure >= target
        verdict = f"{'target':<40} {'>= ' + format(target, ',.0f'):>12}"
    else:
        ratio = figure / reference if reference > 0 else 0.0
        passed = ratio >= target
        verdict = f"{'ratio':<40} {ratio:11.2f}x   target >= {target}x"
    print(f"   {verdict}   {'PASS' if passed else 'BELOW TARGET'}")
    return passed
