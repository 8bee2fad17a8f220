"""Requests per second and latency through the relay versus straight to the same fake provider.

One fake provider (no added latency, answers at once) and one relay (uvicorn, `--relay-workers`
processes, on a scratch PostgreSQL database) run as their own processes. The same load,
`--concurrency` requests
in flight from one asyncio client, goes straight to the provider, then through the relay (which
authenticates the key, routes, holds the worst case, dispatches, and settles the actual cost in
the ledger), then straight again; the direct figure is the mean of the two direct runs. Printed:
requests/s and p50/p99 latency of each, the throughput ratio (target: at least 0.5) and the p50
latency the relay adds (aim: under 5 ms), the CPU one request cost in each run (the load's
client, which is this process, the relay's processes, the provider's, and the database's
backends: on two shared cores their sum is what bounds the rate), and `ledger_check` after the
relay's captures are booked.

The relay runs as production runs it: uvicorn with uvloop and httptools (uvicorn[standard]'s
parts, pinned in requirements.txt).

Each buyer's requests queue on its own balance (a hold locks the buyer's accounts), so the load
is spread over `--buyers` buyers, as a real exchange's is.

    python -m benchmarks.relay [--seconds 10] [--concurrency 16] [--buyers 16] [--max-tokens 16]
                               [--relay-workers 1]
"""

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.exchange import cpu_by_pid, cpu_used_s, free_port, quantile_ms, server_pids
from benchmarks.reference import ROOT, django_setup, scratch_database

TARGET_RATIO = 0.5
MODEL = "bench-model"


def _prepare(provider_url: str, buyers: int) -> list[str]:
    """A market, a provider endpoint at `provider_url`, funded buyers; returns their relay keys."""
    from django.db import transaction
    from django.utils import timezone

    from accounts.models import Membership, Org, Role, User
    from accounts.principal import Principal
    from accounts.services import api_key_create
    from marketplace.models import Market, ModelTier, ProviderEndpoint, Region
    from settlement.models import LedgerAccount, LedgerTransaction
    from settlement.services import ledger_post, org_account, platform_account, transfer

    tier = ModelTier.objects.create(
        name="Bench",
        slug="bench",
        min_context_tokens=8_000,
        min_output_tokens_per_s=10,
        max_ttft_ms=1_000,
        max_output_tokens=4_096,
        admitted_models=[MODEL],
    )
    region = Region.objects.create(code="bn", name="Bench")
    market = Market.objects.create(
        tier=tier,
        region=region,
        symbol="BENCH-BN",
        lot_tokens=1_000_000,
        tick_micro=1_000,
        max_lots=1_000,
        reference_price_micro=1_000_000,
        band_bp=2_000,
        output_weight_bp=40_000,
        cache_weight_bp=1_000,
        delivery_days=30,
    )
    provider = Org.objects.create(name="Bench provider", slug="bench-provider", is_provider=True)
    ProviderEndpoint.objects.create(
        org=provider,
        market=market,
        base_url=f"{provider_url}/v1",
        models=[MODEL],
        capacity_tokens_per_day=10**12,
        status=ProviderEndpoint.Status.VERIFIED,
        verified_at=timezone.now(),
    )
    secrets = []
    for index in range(buyers):
        buyer = Org.objects.create(name=f"Bench buyer {index}", slug=f"bench-buyer-{index}")
        user = User.objects.create_user(f"bench{index}@example.test", "unused-password")
        membership = Membership.objects.create(user=user, org=buyer, role=Role.OWNER)
        with transaction.atomic():
            ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(
                    platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING),
                    org_account(org_id=buyer.id, kind=LedgerAccount.Kind.AVAILABLE),
                    10**12,
                ),
                reference="bench funding",
            )
        _, secret = api_key_create(
            principal=Principal.for_membership(membership), name="bench", scopes=["relay"]
        )
        secrets.append(secret)
    return secrets


PARTS = ("client", "relay", "provider", "database")


def _server_cpu(relay_pid: int, provider_pid: int, url: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far of the relay's processes, the provider's and the database's backends."""
    workers, backends = server_pids(relay_pid, url)  # uvicorn's workers, if it forked any
    return {
        "relay": cpu_by_pid([relay_pid, *workers]),
        "provider": cpu_by_pid([provider_pid]),
        "database": cpu_by_pid(backends),
    }


def _start(command: list[str], port: int, env: dict) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{command[0]} did not start on port {port}")


async def _load(url: str, keys: list, body: dict, *, seconds: float, concurrency: int):
    """Keep `concurrency` requests in flight for `seconds`; worker i sends with key i mod len."""
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # Loopback only: no proxy from the environment between the load and the servers.
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as client:
        deadline = time.monotonic() + seconds

        async def worker(index: int):
            nonlocal errors
            key = keys[index % len(keys)] if keys else None
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.post(url, json=body, headers=headers)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(index) for index in range(concurrency)))
        elapsed = time.monotonic() - started
    return len(latencies) / elapsed, latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--relay-workers", type=int, default=1, help="uvicorn worker processes.")
    parser.add_argument(
        "--buyers",
        type=int,
        default=16,
        help="Buyers (keys) sharing the load; each has its own balance.",
    )
    args = parser.parse_args()

    with scratch_database("tx_bench_relay") as url:
        django_setup(url, migrate=True)
        provider_port, relay_port = free_port(), free_port()
        provider_url = f"http://127.0.0.1:{provider_port}"
        secrets = _prepare(provider_url, args.buyers)
        env = {**os.environ, "DATABASE_URL": url}
        python = sys.executable
        provider = _start(
            [python, "manage.py", "fake_provider", "--port", str(provider_port)], provider_port, env
        )
        uvicorn = [python, "-m", "uvicorn", "config.asgi:application", "--port", str(relay_port)]
        uvicorn += ["--workers", str(args.relay_workers), "--loop", "uvloop", "--http", "httptools"]
        relay = _start([*uvicorn, "--log-level", "warning", "--no-access-log"], relay_port, env)
        try:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Benchmark the relay, please."}],
                "max_tokens": args.max_tokens,
            }
            direct = f"{provider_url}/v1/chat/completions"
            through = f"http://127.0.0.1:{relay_port}/v1/chat/completions"
            run = {"seconds": args.seconds, "concurrency": args.concurrency}
            asyncio.run(_load(through, secrets, body, seconds=1, concurrency=2))  # warm up
            cpu = {}

            def measured(name, target, keys):
                before = _server_cpu(relay.pid, provider.pid, url)
                client_before = time.process_time()  # the load runs in this process alone
                result = asyncio.run(_load(target, keys, body, **run))
                used = {"client": time.process_time() - client_before}
                after = _server_cpu(relay.pid, provider.pid, url)
                used |= {part: cpu_used_s(before[part], after[part]) for part in after}
                served = max(len(result[1]), 1)
                cpu[name] = {part: 1e6 * used[part] / served for part in PARTS}
                return result

            first = measured("direct 1", direct, [])
            relayed = measured("relay", through, secrets)
            second = measured("direct 2", direct, [])
        finally:
            relay.terminate()
            provider.terminate()
            relay.wait(timeout=10)
            provider.wait(timeout=10)
        # The relay books its queued captures as it stops; the ledger must add up after them.
        from django.core.management import CommandError, call_command

        ledger = io.StringIO()
        try:
            call_command("ledger_check", stdout=ledger, stderr=ledger)
            ledger_verdict = "clean"
        except CommandError as error:
            ledger_verdict = f"FAILED: {error}; {ledger.getvalue().strip()}"

    direct_rps = statistics.mean([first[0], second[0]])
    direct_latencies = first[1] + second[1]
    print(
        f"relay benchmark: {args.concurrency} in flight, {args.buyers} buyers, "
        f"{args.relay_workers} relay worker(s), "
        f"{args.seconds:.0f} s per run"
    )
    for name, rps, latencies, errors in [
        ("direct", direct_rps, direct_latencies, first[2] + second[2]),
        ("relay", relayed[0], relayed[1], relayed[2]),
    ]:
        print(
            f"  {name:7s} {rps:8.1f} req/s   p50 {quantile_ms(latencies, 0.5):7.2f} ms   "
            f"p99 {quantile_ms(latencies, 0.99):7.2f} ms   non-200: {errors}"
        )
    ratio = relayed[0] / direct_rps
    added = quantile_ms(relayed[1], 0.5) - quantile_ms(direct_latencies, 0.5)
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"  ratio relay/direct {ratio:.2f} ({verdict} the {TARGET_RATIO} target)")
    print(f"  p50 added by the relay {added:.2f} ms")
    print("  CPU us per request: " + " / ".join(PARTS) + " = total")
    for name, used in cpu.items():
        parts = " / ".join(f"{used[part]:,.0f}" for part in PARTS)
        print(f"    {name:8s}  {parts} = {sum(used.values()):,.0f}")
    print(f"  ledger_check after the run: {ledger_verdict}")


if __name__ == "__main__":
    main()
