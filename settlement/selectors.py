"""Reads for settlement: balances, ledger history, top-ups, entitlements. Never write."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.apps import apps
from django.db.models import F, Min, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import Org
from core.errors import ValidationFailed
from core.units import TOKENS_PER_PRICE_UNIT, div_floor, money_format
from settlement.errors import (
    CreditBuyerNotFound,
    CreditNotAProvider,
    TopUpNotFound,
    UsageMarketNotFound,
)
from settlement.models import (
    Discrepancy,
    Entitlement,
    LedgerAccount,
    LedgerEntry,
    PaygMeter,
    Payout,
    PayoutAccount,
    TopUp,
    Withdrawal,
)
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


ENTITLEMENT_ROLES = ("buyer", "provider")


def entitlement_list(
    *,
    org_id: int,
    role: str = "buyer",
    market_id: int | None = None,
    market_symbol: str | None = None,
    status: str | None = None,
) -> QuerySet[Entitlement]:
    """The entitlements the org bought (role "buyer") or sold (role "provider"), newest first.

    Other orgs' entitlements never show: the org is always one side of each row. The market is
    named by id or by symbol (a lookup by name: settlement does not import the marketplace).
    """
    if role == "buyer":
        entitlements = Entitlement.objects.filter(buyer_org_id=org_id)
    elif role == "provider":
        entitlements = Entitlement.objects.filter(provider_org_id=org_id)
    else:
        raise ValidationFailed(
            "role must be buyer or provider.", fields={"role": ["Choose buyer or provider."]}
        )
    if market_id is not None:
        entitlements = entitlements.filter(market_id=market_id)
    if market_symbol is not None:
        entitlements = entitlements.filter(market__symbol=market_symbol.upper())
    if status is not None:
        entitlements = entitlements.filter(status=status)
    return entitlements.select_related("market").order_by("-id")


# Pay-as-you-go reference price (DESIGN.md "Money flow" 6). The rule, in order:
# 1. `vwap_24h`: the volume-weighted average price of the market's trades in the last 24 hours
#    (the ticker's window, so the buyer can see the price on the market page), rounded down;
# 2. `best_ask`: the lowest open ask on the book;
# 3. `list`: the market's list price (`reference_price_micro`).
# Trades and orders are read by model name: settlement does not import the marketplace.
REFERENCE_PRICE_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class ReferencePrice:
    price_micro: int  # per 1M billable tokens
    rule: str  # vwap_24h | best_ask | list


def reference_price_get(*, market, now: datetime | None = None) -> ReferencePrice:
    """The market's pay-as-you-go price now: recent VWAP, else best ask, else the list price."""
    now = now or timezone.now()
    trade_model = apps.get_model("marketplace", "Trade")
    figures = trade_model.objects.filter(
        market_id=market.id, created_at__gt=now - REFERENCE_PRICE_WINDOW, created_at__lte=now
    ).aggregate(notional=Sum("notional_micro"), tokens=Sum("tokens"))
    if figures["tokens"]:
        price, _ = div_floor(figures["notional"] * TOKENS_PER_PRICE_UNIT, figures["tokens"])
        if price > 0:
            return ReferencePrice(price_micro=price, rule="vwap_24h")
    order_model = apps.get_model("marketplace", "Order")
    best_ask = order_model.objects.filter(
        market_id=market.id, side=order_model.Side.SELL, status=order_model.Status.OPEN
    ).aggregate(price=Min("price_micro"))["price"]
    if best_ask:
        return ReferencePrice(price_micro=best_ask, rule="best_ask")
    return ReferencePrice(price_micro=market.reference_price_micro, rule="list")


def payg_tokens_covered(*, available_micro: int, price_micro: int, remainder: int = 0) -> int:
    """The most pay-as-you-go tokens whose cost, rounded cumulatively, `available_micro` covers.

    Cost of t tokens = floor((remainder + t x price) / 10^6) <= available exactly when
    t x price <= (available + 1) x 10^6 - 1 - remainder.
    """
    if available_micro < 0:
        return 0
    room = (available_micro + 1) * TOKENS_PER_PRICE_UNIT - 1 - remainder
    tokens, _ = div_floor(max(room, 0), price_micro)
    return tokens


@dataclass(frozen=True)
class Credit:
    """What a buyer can still draw from one provider in one market, in billable tokens."""

    buyer: Org
    market: object
    entitlement_tokens: int
    payg_tokens: int
    reference_price: ReferencePrice
    unfunded_tokens: int
    unfunded_micro: int

    @property
    def billable_tokens(self) -> int:
        return self.entitlement_tokens + self.payg_tokens


def credit_get(
    *, provider_org: Org, buyer_slug: str, market_symbol: str, now: datetime | None = None
) -> Credit:
    """How many billable tokens `buyer_slug` can still draw from this provider in the market.

    Entitlements left (open, unexpired) plus what the buyer's available balance covers at the
    reference price. Only a provider with entitlements sold to the buyer in that market may ask;
    for anyone else the buyer does not exist (404), so balances never leak to strangers.
    """
    now = now or timezone.now()
    if not provider_org.is_provider:
        raise CreditNotAProvider()
    market_model = apps.get_model("marketplace", "Market")
    market = market_model.objects.filter(symbol=market_symbol.upper()).first()
    if market is None:
        raise UsageMarketNotFound(f"No market {market_symbol}.")
    buyer = Org.objects.filter(slug=buyer_slug.lower()).first()
    pair = Entitlement.objects.filter(
        provider_org_id=provider_org.id, market_id=market.id, buyer_org_id=getattr(buyer, "id", 0)
    )
    if buyer is None or not pair.exists():
        raise CreditBuyerNotFound()
    entitlement_tokens = (
        pair.filter(status=Entitlement.Status.OPEN, expires_at__gt=now).aggregate(
            left=Sum(F("tokens_bought") - F("tokens_used"))
        )["left"]
        or 0
    )
    meter = PaygMeter.objects.filter(
        buyer_org_id=buyer.id, provider_org_id=provider_org.id, market_id=market.id
    ).first()
    price = reference_price_get(market=market, now=now)
    payg_tokens = payg_tokens_covered(
        available_micro=account_balance(org_id=buyer.id, kind=Kind.AVAILABLE),
        price_micro=price.price_micro,
        remainder=meter.remainder if meter else 0,
    )
    return Credit(
        buyer=buyer,
        market=market,
        entitlement_tokens=entitlement_tokens,
        payg_tokens=payg_tokens,
        reference_price=price,
        unfunded_tokens=meter.unfunded_tokens if meter else 0,
        unfunded_micro=meter.unfunded_micro if meter else 0,
    )


# Statements and discrepancies (settlement runs). Appended here; see settlement/services/
# settlement_runs.py for how a run writes them.


@dataclass(frozen=True)
class StatementRow:
    """One org account over a period: opening + credits - debits = closing."""

    org_id: int
    account_kind: str
    currency: str
    opening_micro: int
    credits_micro: int
    debits_micro: int
    movements: dict  # net micro-USD by ledger transaction kind; sums to credits - debits

    @property
    def closing_micro(self) -> int:
        return self.opening_micro + self.credits_micro - self.debits_micro


def statement_rows(
    *, period_start: datetime, period_end: datetime, org_id: int | None = None
) -> list[StatementRow]:
    """Every org account's statement over [period_start, period_end), or one org's.

    Entries count in the period they were created in. Two GROUP BYs over the ledger: the opening
    balances (entries before the start) and the period's movements by transaction kind.
    """
    entries = LedgerEntry.objects.filter(account__org__isnull=False, created_at__lt=period_end)
    if org_id is not None:
        entries = entries.filter(account__org_id=org_id)
    account = ("account_id", "account__org_id", "account__kind", "account__currency")
    lines: dict[int, dict] = {}

    def line(row: dict) -> dict:
        return lines.setdefault(
            row["account_id"],
            {
                "org_id": row["account__org_id"],
                "account_kind": row["account__kind"],
                "currency": row["account__currency"],
                "opening_micro": 0,
                "credits_micro": 0,
                "debits_micro": 0,
                "movements": {},
            },
        )

    for row in (
        entries.filter(created_at__lt=period_start)
        .values(*account)
        .annotate(total=Sum("amount_micro"))
        .order_by()
    ):
        line(row)["opening_micro"] = row["total"]
    for row in (
        entries.filter(created_at__gte=period_start)
        .values(*account, "transaction__kind")
        .annotate(
            credits=Sum("amount_micro", filter=Q(amount_micro__gt=0), default=0),
            debits=Sum("amount_micro", filter=Q(amount_micro__lt=0), default=0),
        )
        .order_by()
    ):
        found = line(row)
        found["credits_micro"] += row["credits"]
        found["debits_micro"] -= row["debits"]
        kind = row["transaction__kind"]
        found["movements"][kind] = found["movements"].get(kind, 0) + row["credits"] + row["debits"]
    rows = [StatementRow(**values) for values in lines.values()]
    return sorted(rows, key=lambda r: (r.org_id, r.currency, r.account_kind))


def discrepancy_list(*, org_id: int, status: str | None = None):
    """The discrepancies of the org's pairs, as buyer or as provider, newest first."""
    discrepancies = Discrepancy.objects.filter(Q(buyer_org_id=org_id) | Q(provider_org_id=org_id))
    if status is not None:
        discrepancies = discrepancies.filter(status=status)
    return discrepancies.select_related("market").order_by("-id")


# Statement totals and CSV rows, shared by the REST API and the portal so both print the same
# figures. Appended here; the rows come from statement_rows above.

STATEMENT_CSV_HEADER = ("account", "currency", "opening", "credits", "debits", "closing")


def statement_totals(rows: list[StatementRow]) -> dict[str, tuple[int, int, int, int]]:
    """(opening, credits, debits, closing) in micro-USD over all the rows, per currency."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        running = totals.setdefault(row.currency, [0, 0, 0, 0])
        figures = (row.opening_micro, row.credits_micro, row.debits_micro, row.closing_micro)
        for i, figure in enumerate(figures):
            running[i] += figure
    return {currency: tuple(figures) for currency, figures in sorted(totals.items())}


def statement_csv_rows(rows: list[StatementRow]) -> list[list[str]]:
    """A statement as CSV rows: the header, one row per account, then a total per currency."""
    lines = [list(STATEMENT_CSV_HEADER)]
    for row in rows:
        figures = (row.opening_micro, row.credits_micro, row.debits_micro, row.closing_micro)
        lines.append([row.account_kind, row.currency, *map(money_format, figures)])
    for currency, figures in statement_totals(rows).items():
        lines.append(["total", currency, *map(money_format, figures)])
    return lines


def payout_account_get(*, org_id: int) -> PayoutAccount | None:
    """The org's payout account, or None before it first asked to be connected."""
    return PayoutAccount.objects.filter(org_id=org_id).first()


def payout_list(*, org_id: int) -> QuerySet[Payout]:
    """The org's payouts, newest first."""
    return Payout.objects.filter(org_id=org_id).order_by("-id")


def withdrawal_list(*, org_id: int) -> QuerySet[Withdrawal]:
    """The org's withdrawals, newest first, with their refunds."""
    return Withdrawal.objects.filter(org_id=org_id).prefetch_related("refunds").order_by("-id")
