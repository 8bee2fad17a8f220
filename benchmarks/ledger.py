"""Ledger transfers per second with 8 concurrent clients on PostgreSQL, beside pgbench.

Each client is a separate process (threads would share one interpreter lock) running durable
transactions that call `ledger_post` with two postings and an idempotency key: the same path
every money movement takes. Target: at least 0.5x pgbench's TPC-B TPS on the same server.

    python -m benchmarks.ledger [--seconds 20] [--clients 8] [--accounts 64]
"""

import argparse
import multiprocessing
import os
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.reference import pgbench_tps, print_result, scratch_database


def _setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def _prepare(account_count: int) -> list[int]:
    from django.core.management import call_command
    from django.db import transaction

    from accounts.models import Org
    from settlement.models import LedgerAccount, LedgerTransaction
    from settlement.services import ledger_post, org_account, platform_account, transfer

    call_command("migrate", verbosity=0)
    clearing = platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING)
    ids = []
    for i in range(account_count):
        org = Org.objects.create(name=f"bench {i}", slug=f"bench-{i}")
        account = org_account(org_id=org.id, kind=LedgerAccount.Kind.AVAILABLE)
        with transaction.atomic():
            ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(clearing, account, 10**12),
                reference="bench funding",
            )
        ids.append(account.id)
    return ids


def _client(
    url: str, account_ids: list[int], start_at: float, deadline: float, seed: int, results
) -> None:
    _setup_django(url)
    from django.db import transaction

    from settlement.models import LedgerTransaction
    from settlement.services import Posting, ledger_post

    @transaction.atomic(durable=True)
    def one_transfer(source: int, destination: int) -> None:
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=[Posting(source, -1_000), Posting(destination, 1_000)],
            reference="bench",
            idempotency_key=uuid.uuid4().hex,
        )

    rng = random.Random(seed)
    time.sleep(max(0.0, start_at - time.monotonic()))
    done = 0
    while time.monotonic() < deadline:
        source, destination = rng.sample(account_ids, 2)
        one_transfer(source, destination)
        done += 1
    results.put(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--accounts", type=int, default=64)
    args = parser.parse_args()

    reference = pgbench_tps(clients=args.clients, jobs=2, seconds=args.seconds)
    with scratch_database("tx_bench_ledger") as url:
        _setup_django(url)
        account_ids = _prepare(args.accounts)
        from django.db import connections

        connections.close_all()
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        start_at = time.monotonic() + 5  # let every client import Django before the clock runs
        deadline = start_at + args.seconds
        workers = [
            context.Process(
                target=_client, args=(url, account_ids, start_at, deadline, seed, results)
            )
            for seed in range(args.clients)
        ]
        for worker in workers:
            worker.start()
        done = sum(results.get() for _ in workers)
        for worker in workers:
            worker.join()
        elapsed = args.seconds

        from settlement.services import ledger_check

        problems = ledger_check()
    print_result(
        name="ledger transfers (ledger_post, 2 postings, idempotency key, durable transaction)",
        figure=done / elapsed,
        unit=f"transfers/s, {args.clients} client processes",
        reference_tps=reference,
        target_ratio=0.5,
        extra=[
            ("ledger_check after the run", "clean" if not problems else f"{len(problems)} BREACHES")
        ],
    )


if __name__ == "__main__":
    main()
