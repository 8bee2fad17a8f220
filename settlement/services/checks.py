"""`ledger_check`: every invariant of the money flow (DESIGN.md), as set-based SQL.

Each check returns human-readable problems; an empty list means the ledger is sound. The
management command prints them and exits non-zero; tests call it after every money scenario.
"""

from django.db import connection
from django.db.models import Count, F, Q, Sum, Window

from settlement.models import (
    Entitlement,
    Hold,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Payout,
    TopUp,
    UsageDraw,
    UsageRecord,
)

Kind = LedgerAccount.Kind


def _unbalanced_transactions() -> list[str]:
    rows = (
        LedgerEntry.objects.values("transaction_id")
        .annotate(total=Sum("amount_micro"), legs=Count("id"))
        .filter(~Q(total=0) | Q(legs__lt=2))
        .order_by("transaction_id")[:50]
    )
    problems = [
        f"transaction {row['transaction_id']} has {row['legs']} entries summing to {row['total']}"
        for row in rows
    ]
    empty = LedgerTransaction.objects.filter(entries__isnull=True).values_list("id", flat=True)[:50]
    problems += [f"transaction {txn_id} has no entries" for txn_id in empty]
    return problems


def _balances_match_entries() -> list[str]:
    rows = (
        LedgerAccount.objects.annotate(entries_total=Sum("entries__amount_micro"))
        .exclude(balance_micro=0, entries_total__isnull=True)
        .filter(~Q(balance_micro=F("entries_total")) | Q(entries_total__isnull=True))
        .values("id", "org_id", "kind", "balance_micro", "entries_total")[:50]
    )
    return [
        f"account {row['id']} ({row['org_id'] or 'platform'}:{row['kind']}) holds "
        f"{row['balance_micro']} but its entries sum to {row['entries_total'] or 0}"
        for row in rows
    ]


def _running_balances_match() -> list[str]:
    # Each entry's balance_after is what its account held right after it: the sum of the
    # account's entries up to and including it, in the order they were written.
    rows = (
        LedgerEntry.objects.annotate(
            running=Window(Sum("amount_micro"), partition_by=[F("account_id")], order_by="id")
        )
        .filter(~Q(balance_after_micro=F("running")))
        .values("id", "account_id", "balance_after_micro", "running")
        .order_by("id")[:50]
    )
    return [
        f"entry {row['id']} on account {row['account_id']} says the balance became "
        f"{row['balance_after_micro']} but the entries up to it sum to {row['running']}"
        for row in rows
    ]


def _no_negative_balances() -> list[str]:
    rows = (
        LedgerAccount.objects.filter(balance_micro__lt=0)
        .exclude(kind__in=LedgerAccount.SIGNED_KINDS)
        .values("id", "org_id", "kind", "balance_micro")[:50]
    )
    return [
        f"account {row['id']} ({row['org_id'] or 'platform'}:{row['kind']}) is negative: "
        f"{row['balance_micro']}"
        for row in rows
    ]


def _ledger_sums_to_zero() -> list[str]:
    rows = LedgerAccount.objects.values("currency").annotate(total=Sum("balance_micro"))
    return [
        f"all {row['currency']} balances sum to {row['total']}, not zero"
        for row in rows
        if row["total"] != 0
    ]


def _held_matches_open_holds() -> list[str]:
    open_by_org = dict(
        Hold.objects.filter(status=Hold.Status.OPEN)
        .values("org_id")
        .annotate(remaining=Sum(F("amount_micro") - F("captured_micro") - F("released_micro")))
        .values_list("org_id", "remaining")
    )
    held_by_org = dict(
        LedgerAccount.objects.filter(kind=Kind.HELD).values_list("org_id", "balance_micro")
    )
    problems = []
    for org_id in sorted(set(open_by_org) | set(held_by_org)):
        held = held_by_org.get(org_id, 0)
        expected = open_by_org.get(org_id, 0)
        if held != expected:
            problems.append(f"org {org_id} holds {held} but its open holds total {expected}")
    spent_but_open = (
        Hold.objects.filter(
            status=Hold.Status.OPEN, amount_micro=F("captured_micro") + F("released_micro")
        )
        .values_list("reference", flat=True)
        .order_by("id")[:50]
    )
    problems += [
        f"hold {reference} has nothing left but is still open" for reference in spent_but_open
    ]
    return problems


def _escrow_matches_entitlements() -> list[str]:
    """Each buyer's escrow is exactly the unused value of its open entitlements."""
    open_by_org = dict(
        Entitlement.objects.filter(status=Entitlement.Status.OPEN)
        .values("buyer_org_id")
        .annotate(left=Sum(F("value_micro") - F("charged_micro")))
        .values_list("buyer_org_id", "left")
    )
    escrow_by_org = dict(
        LedgerAccount.objects.filter(kind=Kind.ESCROW).values_list("org_id", "balance_micro")
    )
    problems = []
    for org_id in sorted(set(open_by_org) | set(escrow_by_org)):
        escrow = escrow_by_org.get(org_id, 0)
        expected = open_by_org.get(org_id, 0)
        if escrow != expected:
            problems.append(
                f"org {org_id} has {escrow} in escrow but its open entitlements hold {expected}"
            )
    return problems


def _topups_credited_once() -> list[str]:
    credited = dict(
        LedgerEntry.objects.filter(
            transaction__kind=LedgerTransaction.Kind.TOPUP,
            transaction__reference__startswith="topup:",
            account__kind=Kind.AVAILABLE,
        )
        .values("transaction__reference")
        .annotate(total=Sum("amount_micro"))
        .values_list("transaction__reference", "total")
    )
    problems = []
    for topup in TopUp.objects.filter(
        Q(status=TopUp.Status.SUCCEEDED) | Q(pk__in=_topup_ids(credited))
    ).only("id", "status", "amount_micro"):
        got = credited.get(topup.ledger_reference, 0)
        want = topup.amount_micro if topup.status == TopUp.Status.SUCCEEDED else 0
        if got != want:
            problems.append(f"top-up {topup.id} ({topup.status}) credited {got}, expected {want}")
    return problems


def _payout_pending_matches_payouts_in_flight() -> list[str]:
    """Each org's payout_pending is exactly the amount of its payouts not yet confirmed."""
    in_flight_by_org = dict(
        Payout.objects.filter(status__in=Payout.IN_FLIGHT)
        .values("org_id")
        .annotate(total=Sum("amount_micro"))
        .values_list("org_id", "total")
    )
    pending_by_org = dict(
        LedgerAccount.objects.filter(kind=Kind.PAYOUT_PENDING).values_list(
            "org_id", "balance_micro"
        )
    )
    problems = []
    for org_id in sorted(set(in_flight_by_org) | set(pending_by_org)):
        pending = pending_by_org.get(org_id, 0)
        expected = in_flight_by_org.get(org_id, 0)
        if pending != expected:
            problems.append(
                f"org {org_id} has {pending} payout_pending but its payouts in flight "
                f"total {expected}"
            )
    return problems


def _topup_ids(credited: dict) -> list[int]:
    return [int(reference.split(":", 1)[1]) for reference in credited]


def _usage_matches_ledger_and_entitlements() -> list[str]:
    """Pay-as-you-go records were charged exactly once, and draws stay within what was used.

    Only ingested records are charged from `available` here; the relay charges its requests
    through their holds (`relay:<request id>`), which the held-equals-open-holds check covers.
    An entitlement's tokens_used may exceed its usage draws, never fall short of them.
    """
    charged = (
        UsageRecord.objects.filter(payg_cost_micro__gt=0)
        .exclude(source=UsageRecord.Source.RELAY)
        .aggregate(total=Sum("payg_cost_micro"))["total"]
        or 0
    )
    debited = -(
        LedgerEntry.objects.filter(
            transaction__kind=LedgerTransaction.Kind.PAYG,
            transaction__reference__startswith="usage:",
            account__kind=Kind.AVAILABLE,
        ).aggregate(total=Sum("amount_micro"))["total"]
        or 0
    )
    problems = []
    if charged != debited:
        problems.append(
            f"usage records charged {charged} pay-as-you-go but the ledger debited {debited}"
        )
    with connection.cursor() as cursor:
        cursor.execute(_DRAWS_OVER_USED_SQL)
        over = cursor.fetchall()
    problems += [
        f"entitlement {entitlement_id} has draws of {drawn} tokens but only {used} used"
        for entitlement_id, drawn, used in over
    ]
    return problems


# The draws are summed per entitlement first and only the sums are joined to the
# entitlements: joining every draw to its entitlement before grouping costs a lookup per draw.
_DRAWS_OVER_USED_SQL = f"""
    SELECT drawn.entitlement_id, drawn.tokens, e.tokens_used
      FROM (SELECT entitlement_id, SUM(tokens) AS tokens
              FROM {UsageDraw._meta.db_table}
             GROUP BY entitlement_id) AS drawn
      JOIN {Entitlement._meta.db_table} AS e ON e.id = drawn.entitlement_id
     WHERE drawn.tokens > e.tokens_used
     ORDER BY drawn.entitlement_id
     LIMIT 50
"""  # noqa: S608


CHECKS = (
    _unbalanced_transactions,
    _balances_match_entries,
    _running_balances_match,
    _no_negative_balances,
    _ledger_sums_to_zero,
    _held_matches_open_holds,
    _escrow_matches_entitlements,
    _topups_credited_once,
    _payout_pending_matches_payouts_in_flight,
    _usage_matches_ledger_and_entitlements,
)


def ledger_check() -> list[str]:
    """Run every invariant check; return the problems found (empty when sound). Read only."""
    problems: list[str] = []
    for check in CHECKS:
        problems.extend(check())
    return problems
