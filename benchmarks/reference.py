"""What every benchmark shares: scratch databases, the pgbench reference, and the result block.

Figures on a shared machine move with its load, so each benchmark measures pgbench's TPC-B
transactions per second on the same PostgreSQL server in the same run and prints its own figure
as a ratio of that reference.
"""

import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from urllib.parse import urlparse, urlunparse

import psycopg

DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgres") else DEFAULT_SERVER_URL


def database_url(name: str, base_url: str | None = None) -> str:
    parsed = urlparse(base_url or server_url())
    return urlunparse(parsed._replace(path=f"/{name}"))


@contextmanager
def scratch_database(name: str, base_url: str | None = None):
    """Create an empty database `name` on the server, yield its URL, drop it afterwards."""
    admin_url = base_url or server_url()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name, admin_url)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pgbench_args(url: str) -> list[str]:
    parsed = urlparse(url)
    args = ["-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 5432)]
    if parsed.username:
        args += ["-U", parsed.username]
    return args


def pgbench_tps(*, clients: int = 8, jobs: int = 2, seconds: int = 20, scale: int = 10) -> float:
    """TPC-B transactions/s from pgbench on a scratch database of the same server."""
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    with scratch_database("tx_bench_pgbench") as url:
        dbname = urlparse(url).path.lstrip("/")
        base = [pgbench, *_pgbench_args(url)]
        subprocess.run(
            [*base, "-i", "-q", "-s", str(scale), dbname], check=True, capture_output=True
        )
        run = subprocess.run(
            [*base, "-c", str(clients), "-j", str(jobs), "-T", str(seconds), dbname],
            check=True,
            capture_output=True,
            text=True,
        )
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", run.stdout)
    if not match:
        raise RuntimeError(f"could not read pgbench's TPS from:\n{run.stdout}")
    return float(match.group(1))


def print_result(
    *, name: str, figure: float, unit: str, reference_tps: float, target_ratio: float, extra=()
) -> bool:
    ratio = figure / reference_tps if reference_tps else 0.0
    passed = ratio >= target_ratio
    print(f"== {name}")
    print(f"   {unit:<34} {figure:12,.0f}")
    print(f"   {'pgbench TPC-B TPS (same run)':<34} {reference_tps:12,.0f}")
    for label, value in extra:
        print(f"   {label:<34} {value:>12}")
    print(
        f"   {'ratio':<34} {ratio:12.2f}x   target >= {target_ratio}x   "
        f"{'PASS' if passed else 'BELOW TARGET'}"
    )
    return passed
