"""Ledger transfers per second with 8 concurrent client processes on PostgreSQL, beside pgbench.

Each client is a separate process posting transfers of two postings with a fresh idempotency
key between a random pair of funded org accounts. The figure is `ledger_post_durable`, a
transfer as its own durable transaction (how a movement with nothing else to commit is posted:
one statement, one round trip). The same run also measures `ledger_post` inside the caller's
durable atomic block, the path of a movement committed with its business change (three round
trips: BEGIN, the statement, COMMIT), and prints it beside the figure. pgbench's TPC-B (`-c 8
-j 2`, scale 10) runs on the same server before and after each ledger run; the reference for a
run is the mean of the pgbench runs around it. Target: at least 0.5x. Each run also prints the
CPU one transfer cost the client and its database backend, which stays put when other load on
the machine moves the throughput.

    python -m benchmarks.ledger [--seconds 20] [--rounds 1] [--clients 8] [--accounts 64]
"""

import argparse
import functools
import random
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.reference import (
    django_setup,
    pgbench_database,
    print_result,
    run_clients,
    scratch_database,
)

TARGET_RATIO = 0.5
TRANSFER_MICRO = 1_000
FUNDING_MICRO = 10**12
REFERENCE = "bench transfer"
DURABLE = "durable"
IN_TRANSACTION = "in atomic"
MODES = (DURABLE, IN_TRANSACTION)


def _prepare(account_count: int) -> list[int]:
    """Create `account_count` orgs with a funded available account; return the account ids."""
    from django.db import transaction

    from accounts.models import Org
    from settlement.models import LedgerAccount, LedgerTransaction
    from settlement.services import ledger_post, org_account, platform_account, transfer

    clearing = platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING)
    ids = []
    for i in range(account_count):
        org = Org.objects.create(name=f"bench {i}", slug=f"bench-{i}")
        account = org_account(org_id=org.id, kind=LedgerAccount.Kind.AVAILABLE)
        with transaction.atomic():
            ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(clearing, account, FUNDING_MICRO),
                reference="bench funding",
            )
        ids.append(account.id)
    return ids


def _client_setup(url: str, account_ids: list[int], mode: str, client_index: int):
    django_setup(url)
    from django.db import transaction

    from settlement.models import LedgerTransaction
    from settlement.services import Posting, ledger_post, ledger_post_durable

    def durable_transfer(source: int, destination: int) -> None:
        ledger_post_durable(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=[Posting(source, -TRANSFER_MICRO), Posting(destination, TRANSFER_MICRO)],
            reference=REFERENCE,
            idempotency_key=uuid.uuid4().hex,
        )

    @transaction.atomic(durable=True)
    def in_transaction_transfer(source: int, destination: int) -> None:
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=[Posting(source, -TRANSFER_MICRO), Posting(destination, TRANSFER_MICRO)],
            reference=REFERENCE,
            idempotency_key=uuid.uuid4().hex,
        )

    one_transfer = durable_transfer if mode == DURABLE else in_transaction_transfer
    return one_transfer, account_ids, random.Random(client_index)


def _client_transfer(state) -> None:
    one_transfer, account_ids, rng = state
    source, destination = rng.sample(account_ids, 2)
    one_transfer(source, destination)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each timed run")
    parser.add_argument("--rounds", type=int, default=1, help="ledger runs, each between pgbench")
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument("--accounts", type=int, default=64, help="funded org accounts")
    args = parser.parse_args()

    with pgbench_database(scale=10) as pgbench, scratch_database("tx_bench_ledger") as url:
        django_setup(url, migrate=True)
        account_ids = _prepare(args.accounts)
        from django.db import connections

        connections.close_all()  # the clients are new processes with their own connections
        references = [pgbench.tps(clients=args.clients, jobs=2, seconds=args.seconds)]
        runs = []  # (mode, run), each run between two pgbench runs
        for _ in range(args.rounds):
            for mode in MODES:
                run = run_clients(
                    setup=functools.partial(_client_setup, url, account_ids, mode),
                    operation=_client_transfer,
                    clients=args.clients,
                    seconds=args.seconds,
                )
                runs.append((mode, run))
                references.append(pgbench.tps(clients=args.clients, jobs=2, seconds=args.seconds))

        from settlement.models import LedgerTransaction
        from settlement.services import ledger_check

        written = LedgerTransaction.objects.filter(reference=REFERENCE).count()
        problems = ledger_check()
        connections.close_all()

    details = []
    ratios = {mode: [] for mode in MODES}
    for number, (mode, run) in enumerate(runs):
        before, after = references[number], references[number + 1]
        ratio = run.per_second / statistics.fmean([before, after])
        ratios[mode].append(ratio)
        details += [
            (
                f"{mode}: pgbench, ledger, pgbench",
                f"{before:,.0f}, {run.per_second:,.0f}, {after:,.0f}",
            ),
            (
                f"{mode}: ratio; p50 / p99 ms",
                f"{ratio:.2f}x; {run.latency_ms(0.5):.1f} / {run.latency_ms(0.99):.1f}",
            ),
            (f"{mode}: CPU us/transfer client/db", run.cpu_us_per_operation()),
        ]
    counted = sum(run.operations for _, run in runs)
    details += [
        (f"{IN_TRANSACTION}: mean ratio", f"{statistics.fmean(ratios[IN_TRANSACTION]):.2f}x"),
        ("transfers timed / written (+ warm-ups)", f"{counted:,} / {written:,}"),
        ("ledger_check after the run", "clean" if not problems else f"{len(problems)} BREACHES"),
    ]
    durable_runs = [run for mode, run in runs if mode == DURABLE]
    durable_references = [
        statistics.fmean(references[number : number + 2])
        for number, (mode, _) in enumerate(runs)
        if mode == DURABLE
    ]
    print_result(
        name="ledger transfers (2 postings, idempotency key, durable transaction)",
        figure=statistics.fmean(run.per_second for run in durable_runs),
        unit=f"ledger_post_durable transfers/s, {args.clients} clients",
        target=TARGET_RATIO,
        reference=statistics.fmean(durable_references),
        reference_label=f"pgbench TPC-B TPS, -c {args.clients} -j 2",
        details=tuple(details),
    )
    for problem in problems:
        print(f"   BREACH: {problem}")


if __name__ == "__main__":
    main()
