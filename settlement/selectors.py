"""Reads for settlement: balances, ledger history, top-ups. Never write."""

from dataclasses import dataclass

from django.db.models import F, QuerySet, Sum

from settlement.errors import TopUpNotFound
from settlement.models import Entitlement, LedgerAccount, LedgerEntry, TopUp
from settlement.models.ledger import CURRENCY_USD

Kind = LedgerAccount.Kind


@dataclass(frozen=True)
class Balances:
    currency: str
    available_micro: int = 0
    held_micro: int = 0
    escrow_micro: int = 0
    earned_micro: int = 0
    payout_pending_micro: int = 0

    @property
    def total_micro(self) -> int:
        return (
            self.available_micro
            + self.held_micro
            + self.escrow_micro
            + self.earned_micro
            + self.payout_pending_micro
        )


def balances_for_org(*, org_id: int) -> list[Balances]:
    """One Balances per currency the org holds (USD always listed, even when empty)."""
    by_currency: dict[str, dict[str, int]] = {CURRENCY_USD: {}}
    for kind, currency, balance in LedgerAccount.objects.filter(org_id=org_id).values_list(
        "kind", "currency", "balance_micro"
    ):
        by_currency.setdefault(currency, {})[f"{kind}_micro"] = balance
    return [
        Balances(currency=currency, **amounts) for currency, amounts in sorted(by_currency.items())
    ]


def account_balance(*, org_id: int, kind: str, currency: str = CURRENCY_USD) -> int:
    balance = (
        LedgerAccount.objects.filter(org_id=org_id, kind=kind, currency=currency)
        .values_list("balance_micro", flat=True)
        .first()
    )
    return balance or 0


def ledger_entry_list(*, org_id: int) -> QuerySet[LedgerEntry]:
    """The org's ledger entries, newest first, with their transaction and account."""
    return (
        LedgerEntry.objects.filter(account__org_id=org_id)
        .select_related("transaction", "account")
        .order_by("-id")
    )


def topup_list(*, org_id: int) -> QuerySet[TopUp]:
    return TopUp.objects.filter(org_id=org_id).order_by("-id")


def topup_get(*, org_id: int, topup_id: int) -> TopUp:
    """A top-up of this org; other orgs' top-ups do not exist for the caller."""
    topup = TopUp.objects.filter(pk=topup_id, org_id=org_id).first()
    if topup is None:
        raise TopUpNotFound()
    return topup


def entitlement_undelivered_tokens(*, provider_org_id: int, market_id: int) -> int:
    """Billable tokens the provider sold in the market and has not delivered yet (open ones)."""
    total = Entitlement.objects.filter(
        provider_org_id=provider_org_id, market_id=market_id, status=Entitlement.Status.OPEN
    ).aggregate(tokens=Sum(F("tokens_bought") - F("tokens_used")))["tokens"]
    return total or 0
