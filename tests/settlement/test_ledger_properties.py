"""Hypothesis: random streams of money operations never break a ledger invariant.

A state machine funds three orgs, places holds, captures parts of them into another org's
`earned` or the platform's fees, releases them, moves money between orgs and makes staff
adjustments, in any order and with any amounts, including ones that must be refused. A plain
Python model of the balances runs alongside: every operation must succeed exactly when the model
says it can, and after every step the ledger must agree with the model and keep its invariants.

Each example runs inside its own transaction, rolled back at the end, so examples start clean.
Nothing goes to escrow: until entitlements exist, ledger_check wants escrow empty.
"""

from collections import defaultdict
from unittest import mock

import pytest
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from core.errors import ApplicationError, InsufficientFunds
from settlement.errors import HoldExceeded
from settlement.models import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.services import (
    Posting,
    hold_capture,
    hold_place,
    hold_release,
    ledger_adjust,
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)
from settlement.services import ledger as ledger_module
from tests.accounts.factories import OrgFactory, UserFactory

Kind = LedgerAccount.Kind
ORGS = 3

amounts = st.integers(min_value=1, max_value=40_000_000)
org_indexes = st.integers(min_value=0, max_value=ORGS - 1)
# A share of what is there, in basis points: mostly within it, about one time in six beyond it,
# so both the allowed and the refused paths run often.
shares_bp = st.integers(min_value=1, max_value=12_000)


def _share(of_micro: int, share_bp: int) -> int:
    return max(1, of_micro * share_bp // 10_000)


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self):
        super().__init__()
        self._example = transaction.atomic()
        self._example.__enter__()
        self.model: dict[tuple[int, str], int] = defaultdict(int)  # (org index, kind) → balance
        self.platform: dict[str, int] = defaultdict(int)
        self.remaining: dict[str, int] = {}  # hold reference → what is left on it
        self.hold_org: dict[str, int] = {}
        self.steps = 0

    def teardown(self):
        transaction.set_rollback(True)
        self._example.__exit__(None, None, None)

    @initialize(opening_micro=st.lists(amounts, min_size=ORGS, max_size=ORGS))
    def create_orgs(self, opening_micro):
        self.orgs = [OrgFactory() for _ in range(ORGS)]
        self.staff = UserFactory(is_staff=True)
        for org, amount_micro in enumerate(opening_micro):
            self.fund(org, amount_micro)

    def _key(self) -> str:
        self.steps += 1
        return f"step-{self.steps}"

    def _account(self, index: int, kind: str) -> LedgerAccount:
        return org_account(org_id=self.orgs[index].id, kind=kind)

    def _apply(self, operation, *, allowed: bool, refusal: type[ApplicationError]):
        """Run `operation` in a savepoint; it must succeed iff `allowed`, else raise `refusal`."""
        if allowed:
            with transaction.atomic():
                return operation()
        with pytest.raises(refusal), transaction.atomic():
            operation()
        return None

    @rule(org=org_indexes, amount_micro=amounts)
    def fund(self, org, amount_micro):
        with transaction.atomic():
            ledger_post(
                kind=LedgerTransaction.Kind.TOPUP,
                postings=transfer(
                    platform_account(kind=Kind.STRIPE_CLEARING),
                    self._account(org, Kind.AVAILABLE),
                    amount_micro,
                ),
                reference="top-up",
                idempotency_key=self._key(),
            )
        self.model[(org, Kind.AVAILABLE)] += amount_micro
        self.platform[Kind.STRIPE_CLEARING] -= amount_micro

    @rule(target=holds, org=org_indexes, share_bp=shares_bp)
    def place_hold(self, org, share_bp):
        reference = f"bid:{self._key()}"
        amount_micro = _share(self.model[(org, Kind.AVAILABLE)], share_bp)
        allowed = amount_micro <= self.model[(org, Kind.AVAILABLE)]
        self._apply(
            lambda: hold_place(
                org_id=self.orgs[org].id, amount_micro=amount_micro, reference=reference
            ),
            allowed=allowed,
            refusal=InsufficientFunds,
        )
        if not allowed:
            return multiple()
        self.model[(org, Kind.AVAILABLE)] -= amount_micro
        self.model[(org, Kind.HELD)] += amount_micro
        self.remaining[reference] = amount_micro
        self.hold_org[reference] = org
        return reference

    @rule(reference=holds)
    def place_hold_again(self, reference):
        hold = Hold.objects.get(reference=reference)
        with transaction.atomic():
            again = hold_place(
                org_id=hold.org_id, amount_micro=hold.amount_micro, reference=reference
            )
        assert again.pk == hold.pk

    @rule(
        reference=holds,
        share_bp=shares_bp,
        fee_bp=st.integers(min_value=0, max_value=10_000),
        to_fees_only=st.booleans(),
    )
    def capture(self, reference, share_bp, fee_bp, to_fees_only):
        org = self.hold_org[reference]
        amount_micro = _share(self.remaining[reference], share_bp)
        seller = (org + 1) % ORGS
        fee_micro = amount_micro if to_fees_only else amount_micro * fee_bp // 10_000
        postings = [Posting(platform_account(kind=Kind.FEES).id, fee_micro)] if fee_micro else []
        if amount_micro - fee_micro:
            earned = self._account(seller, Kind.EARNED)
            postings.append(Posting(earned.id, amount_micro - fee_micro))
        allowed = amount_micro <= self.remaining[reference]
        self._apply(
            lambda: hold_capture(reference=reference, postings=postings, capture_key=self._key()),
            allowed=allowed,
            refusal=HoldExceeded,
        )
        if allowed:
            self.remaining[reference] -= amount_micro
            self.model[(org, Kind.HELD)] -= amount_micro
            self.model[(seller, Kind.EARNED)] += amount_micro - fee_micro
            self.platform[Kind.FEES] += fee_micro

    @rule(reference=holds, share_bp=st.none() | shares_bp)
    def release(self, reference, share_bp):
        org = self.hold_org[reference]
        amount_micro = None if share_bp is None else _share(self.remaining[reference], share_bp)
        released = self.remaining[reference] if amount_micro is None else amount_micro
        allowed = released <= self.remaining[reference]
        self._apply(
            lambda: hold_release(reference=reference, amount_micro=amount_micro),
            allowed=allowed,
            refusal=HoldExceeded,
        )
        if allowed:
            self.remaining[reference] -= released
            self.model[(org, Kind.HELD)] -= released
            self.model[(org, Kind.AVAILABLE)] += released

    @rule(source=org_indexes, destination=org_indexes, share_bp=shares_bp)
    def pay(self, source, destination, share_bp):
        if source == destination:
            return
        amount_micro = _share(self.model[(source, Kind.AVAILABLE)], share_bp)
        allowed = amount_micro <= self.model[(source, Kind.AVAILABLE)]
        self._apply(
            lambda: ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(
                    self._account(source, Kind.AVAILABLE),
                    self._account(destination, Kind.AVAILABLE),
                    amount_micro,
                ),
                reference="pay",
                idempotency_key=self._key(),
            ),
            allowed=allowed,
            refusal=InsufficientFunds,
        )
        if allowed:
            self.model[(source, Kind.AVAILABLE)] -= amount_micro
            self.model[(destination, Kind.AVAILABLE)] += amount_micro

    @rule(
        org=org_indexes,
        kind=st.sampled_from([Kind.AVAILABLE, Kind.EARNED]),
        credit_micro=st.none() | amounts,
        debit_share_bp=shares_bp,
    )
    def adjust(self, org, kind, credit_micro, debit_share_bp):
        amount_micro = credit_micro or -_share(self.model[(org, kind)], debit_share_bp)
        allowed = self.model[(org, kind)] + amount_micro >= 0

        # The service posts as a transaction of its own (ledger_post_durable); here the post runs
        # in the example's savepoint instead, so the example can still be rolled back as a whole.
        def adjust_in_savepoint():
            with mock.patch.object(ledger_module, "ledger_post_durable", ledger_module.ledger_post):
                return ledger_adjust(
                    org=self.orgs[org],
                    account_kind=kind,
                    amount_micro=amount_micro,
                    reason="property test",
                    actor=self.staff,
                    idempotency_key=self._key(),
                )

        self._apply(adjust_in_savepoint, allowed=allowed, refusal=InsufficientFunds)
        if allowed:
            self.model[(org, kind)] += amount_micro
            self.platform[Kind.ADJUSTMENTS] -= amount_micro

    @invariant()
    def every_transaction_sums_to_zero(self):
        unbalanced = (
            LedgerEntry.objects.values("transaction_id")
            .annotate(total=Sum("amount_micro"), legs=Count("id"))
            .filter(~Q(total=0) | Q(legs__lt=2))
        )
        assert not unbalanced.exists()

    @invariant()
    def no_account_that_must_stay_positive_is_negative(self):
        negative = LedgerAccount.objects.filter(balance_micro__lt=0).exclude(
            kind__in=LedgerAccount.SIGNED_KINDS
        )
        assert not negative.exists()

    @invariant()
    def all_balances_sum_to_zero(self):
        total = LedgerAccount.objects.aggregate(total=Sum("balance_micro"))["total"]
        assert (total or 0) == 0

    @invariant()
    def held_equals_the_open_holds(self):
        if not hasattr(self, "orgs"):
            return
        for index, org in enumerate(self.orgs):
            open_left = sum(
                hold.remaining_micro
                for hold in Hold.objects.filter(org=org, status=Hold.Status.OPEN)
            )
            assert self._account(index, Kind.HELD).balance_micro == open_left
            assert open_left == self.model[(index, Kind.HELD)]

    @invariant()
    def balances_match_the_model(self):
        if not hasattr(self, "orgs"):
            return
        for (index, kind), expected in self.model.items():
            assert self._account(index, kind).balance_micro == expected, (index, kind)
        for kind, expected in self.platform.items():
            assert platform_account(kind=kind).balance_micro == expected, kind

    @invariant()
    def holds_close_when_spent(self):
        for reference, left in self.remaining.items():
            status = Hold.objects.get(reference=reference).status
            assert status == (Hold.Status.OPEN if left else Hold.Status.CLOSED)

    @invariant()
    def ledger_check_is_clean(self):
        assert ledger_check() == []


@pytest.mark.django_db
def test_random_money_operations_keep_every_invariant():
    assert connection.in_atomic_block  # the test's own transaction; examples nest inside it
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
