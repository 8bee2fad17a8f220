"""Hypothesis: random streams of money operations never break a ledger invariant.

Each example runs inside a transaction that is rolled back afterwards, so examples start clean.
"""

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ApplicationError
from settlement.models import Hold, LedgerAccount, LedgerTransaction
from settlement.services import (
    Posting,
    hold_capture,
    hold_place,
    hold_release,
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)
from tests.accounts.factories import OrgFactory

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db

amounts = st.integers(min_value=1, max_value=50_000_000)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("fund"), st.integers(0, 2), amounts),
        st.tuples(st.just("hold"), st.integers(0, 2), amounts),
        st.tuples(st.just("capture"), st.integers(0, 20), amounts),
        st.tuples(st.just("release"), st.integers(0, 20), st.one_of(st.none(), amounts)),
        st.tuples(st.just("pay_fee"), st.integers(0, 2), amounts),
    ),
    max_size=25,
)


class _Rollback(Exception):
    pass


def _apply(op, orgs, holds) -> None:
    name, index, amount = op
    fees = platform_account(kind=Kind.FEES)
    if name == "fund":
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                platform_account(kind=Kind.STRIPE_CLEARING),
                org_account(org_id=orgs[index].id, kind=Kind.AVAILABLE),
                amount,
            ),
            reference="fund",
        )
    elif name == "hold":
        holds.append(
            hold_place(org_id=orgs[index].id, amount_micro=amount, reference=f"h{len(holds)}")
        )
    elif name == "capture" and holds:
        hold = holds[index % len(holds)]
        seller = org_account(org_id=orgs[(index + 1) % 3].id, kind=Kind.EARNED)
        fee_micro = amount // 100
        hold_capture(
            reference=hold.reference,
            postings=[Posting(seller.id, amount - fee_micro), Posting(fees.id, fee_micro)],
            capture_key=f"c{index}-{amount}",
        )
    elif name == "release" and holds:
        hold_release(reference=holds[index % len(holds)].reference, amount_micro=amount)
    elif name == "pay_fee":
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                org_account(org_id=orgs[index].id, kind=Kind.AVAILABLE), fees, amount
            ),
            reference="fee",
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_random_money_operations_keep_every_invariant(ops):
    try:
        with transaction.atomic():
            orgs = [OrgFactory() for _ in range(3)]
            holds: list[Hold] = []
            for op in ops:
                try:
                    with transaction.atomic():
                        _apply(op, orgs, holds)
                except ApplicationError:
                    pass  # a refused operation must leave everything as it was
                assert ledger_check() == []
                negative = LedgerAccount.objects.filter(balance_micro__lt=0).exclude(
                    kind__in=LedgerAccount.SIGNED_KINDS
                )
                assert not negative.exists()
            raise _Rollback
    except _Rollback:
        pass
