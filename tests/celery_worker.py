"""A real Celery worker process for tests that are about the worker.

`celery_worker` starts `celery -A config worker --pool=solo` in a subprocess against this test's
database and points this process's Celery app at the same broker, so `market_match_task.delay(...)`
and `delay_on_commit` from the code under test reach the worker instead of running inline. The
broker is kombu's filesystem transport in a folder of the test's own (no server), passed to the
worker through VAR_DIR; the database through DATABASE_URL. Each xdist worker has its own test
database and each test its own broker folder, so tests that use a worker need no xdist group.

The worker only sees committed rows, so the fixture needs `transactional_db`, and it needs
PostgreSQL: on SQLite the test database lives in this process's memory. Bring the fixtures into
a test module's scope (or import them in a conftest) and ask for `celery_worker`:

    from tests import celery_worker as worker_fixtures
    from tests.celery_worker import wait_until

    celery_broker = worker_fixtures.celery_broker
    celery_worker = worker_fixtures.celery_worker
    celery_worker_env = worker_fixtures.celery_worker_env
    pytestmark = pytest.mark.django_db(transaction=True)

    def test_it(celery_worker):
        market_match_task.delay(market_id)
        wait_until(lambda: not Order.objects.filter(status="pending").exists(), timeout=20)

Define `celery_worker_env` in the module instead to give the worker more environment (for
example `{"MATCH_BATCH_SIZE": "20"}`). The fixture yields a `CeleryWorker`: `.process` is the
Popen, `.kill()` SIGKILLs and reaps it, `.stop()` shuts it down warm, `.start()` starts a new one
after either, `.restart()` does both, and `.output()` is what every run wrote. A worker's output
is printed when its test fails; the process is killed and reaped at teardown whatever happened.
Poll with `wait_until`, never sleep-and-assert.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import kombu.pools
import pytest
from django.conf import settings
from django.db import connection

from config.celery import app as celery_app

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Starting the worker imports Django and every app; a busy machine with two xdist workers can
# take several seconds.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, *, every: float = 0.05):
    """Call `predicate` until it returns something truthy and return that; fail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(every)


def database_url() -> str:
    """The URL of the database this test uses (the test database pytest-django created)."""
    db = connection.settings_dict
    user = quote(db["USER"] or "", safe="")
    password = quote(str(db["PASSWORD"] or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}{db['HOST'] or ''}{port}/{quote(db['NAME'], safe='')}"


def match_queues() -> list[str]:
    """Every queue a worker must consume to run every market's match task (marketplace.tasks)."""
    return ["celery", *(f"match-{shard}" for shard in range(settings.MATCH_QUEUE_SHARDS))]


def broker_transport_options(var_dir: Path) -> dict:
    """The filesystem transport's folders under `var_dir`, as config/settings.py derives them."""
    broker_dir = var_dir / "broker"
    return {
        "data_folder_in": str(broker_dir / "queue"),
        "data_folder_out": str(broker_dir / "queue"),
        "processed_folder": str(broker_dir / "processed"),
        "control_folder": str(broker_dir / "control"),
        "store_processed": False,
    }


class CeleryWorker:
    """One worker subprocess at a time; `restart` replaces it with a new one on the same broker."""

    def __init__(self, *, var_dir: Path, env: dict[str, str]):
        self.var_dir = var_dir
        self.env = env
        self.process: subprocess.Popen | None = None
        self.runs: list[Path] = []  # one log file per process started, in order

    @property
    def log_path(self) -> Path:
        return self.runs[-1]

    def start(self) -> None:
        """Start a worker and wait until it consumes its queues."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("a worker is already running; stop or kill it first")
        log_path = self.var_dir / f"worker-{len(self.runs)}.log"
        self.runs.append(log_path)
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=solo",
            "-Q",
            ",".join(match_queues()),
            "--loglevel=INFO",
            # Nothing else listens on this broker: skip the cluster chatter and start faster.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
        ]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while " ready." not in self.output_of(log_path):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with {self.process.returncode} before it was ready:\n"
                    f"{self.output_of(log_path)}"
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"the worker was not ready within {READY_TIMEOUT_S}s:\n"
                    f"{self.output_of(log_path)}"
                )
            time.sleep(0.05)

    def kill(self) -> int | None:
        """SIGKILL the worker, as a crash would, and reap it; returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """Warm shutdown (SIGTERM: finish the current task), killing it if it takes too long."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, *, graceful: bool = False, env: dict[str, str] | None = None) -> None:
        """Replace the worker with a new one on the same broker and database.

        The old one is killed (a crash) unless `graceful`; `env` adds to the new one's environment.
        """
        if graceful:
            self.stop()
        else:
            self.kill()
        if env:
            self.env = {**self.env, **env}
        self.start()

    @staticmethod
    def output_of(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        """Everything every worker process of this fixture wrote, oldest first."""
        return "\n".join(
            f"----- worker run {i} ({path.name}) -----\n{self.output_of(path)}"
            for i, path in enumerate(self.runs)
        )


@pytest.fixture
def celery_worker_env() -> dict[str, str]:
    """More environment for the worker process; override it in a module to change settings."""
    return {}


@pytest.fixture
def celery_broker(transactional_db, tmp_path) -> Path:
    """Point this process's Celery app at a fresh filesystem broker; returns its VAR_DIR.

    Tasks are sent for real (not run inline) for the duration of the test.
    """
    if connection.vendor != "postgresql":
        pytest.skip(
            "a real Celery worker needs PostgreSQL (set DATABASE_URL): the SQLite test "
            "database is in this process's memory, which a worker process cannot reach"
        )
    var_dir = tmp_path / "var"
    options = broker_transport_options(var_dir)
    for folder in (
        options["data_folder_in"],
        options["processed_folder"],
        options["control_folder"],
    ):
        os.makedirs(folder, exist_ok=True)
    conf = celery_app.conf
    ours = {
        "task_always_eager": False,
        "broker_url": "filesystem://",
        "broker_transport_options": options,
    }
    before = {name: conf.get(name) for name in ours}
    conf.update(ours)
    _reset_producer_pools()
    try:
        yield var_dir
    finally:
        conf.update(before)
        _reset_producer_pools()


def _reset_producer_pools() -> None:
    # The app caches its broker connection and producer pools on first use; drop them so the
    # next send connects with the broker settings in force now.
    # kombu also keeps process-wide pools keyed by the broker URL, which stays `filesystem://`
    # while its folders change: reset those too, or a later send reuses a closed pool.
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    kombu.pools.reset()


@pytest.fixture
def celery_worker(request, celery_broker, celery_worker_env):
    """A started worker process on this test's database and broker (see the module's doc)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url(),
        "VAR_DIR": str(celery_broker),
        "CELERY_BROKER_URL": "filesystem://",
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "MATCH_QUEUE_SHARDS": str(settings.MATCH_QUEUE_SHARDS),
        "PYTHONUNBUFFERED": "1",
        **celery_worker_env,
    }
    worker = CeleryWorker(var_dir=celery_broker, env=env)
    failures_before = request.session.testsfailed
    try:
        worker.start()
        yield worker
    finally:
        # Killed rather than stopped: a warm shutdown waits out the transport's two-second
        # poll, and the test is over. Either way the process is reaped before the database is
        # flushed, and a killed worker's connections end with it.
        worker.kill()
        # pytest shows a failed test's teardown output beside its failure, and hides it otherwise.
        if request.session.testsfailed > failures_before:
            print(worker.output())
