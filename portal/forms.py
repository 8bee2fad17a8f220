"""Portal forms. They check shape only (STYLE.md §2); the services decide every business rule,
and `form_apply_error` puts what a service refused back on the form the person filled in."""

import datetime

from django import forms
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.utils.dateparse import parse_datetime

from accounts.models import Scope, User
from core.errors import ApplicationError
from core.units import UnitError, money_display, money_format, money_parse
from marketplace.models import Order
from settlement.models import PayoutAccount

TEST_CARDS = [
    ("pm_card_visa", "Visa 4242 — succeeds"),
    ("pm_card_chargeCustomerFail", "Card that is declined"),
]


def form_apply_error(
    form: forms.Form, error: ApplicationError, *, aliases: dict[str, str] | None = None
) -> None:
    """Show a service's refusal on `form`: its field messages by field, else its message on top."""
    aliases = aliases or {}
    shown = False
    for name, messages in error.fields.items():
        field = aliases.get(name, name)
        for message in messages if isinstance(messages, list) else [messages]:
            form.add_error(field if field in form.fields else None, str(message))
            shown = True
    if not shown:
        form.add_error(None, error.message)


def cents_amount_parse(text: str, *, example: str = "50.00", allow_zero: bool = False) -> int:
    """A USD amount typed in whole cents as micro-USD, or a ValidationError saying what to type."""
    try:
        amount_micro = money_parse(text, places=2)
    except UnitError as error:
        if "decimal places" in str(error):
            raise forms.ValidationError(f"Use whole cents, such as {example}.") from None
        raise forms.ValidationError(f"Enter an amount in US dollars, such as {example}.") from None
    if amount_micro < 0 or (amount_micro == 0 and not allow_zero):
        raise forms.ValidationError(
            "Enter zero or more." if allow_zero else "Enter an amount above zero."
        )
    return amount_micro


def price_input_text(micro: int) -> str:
    """A price as a person types it back: 5_000_000 -> "5.00", 4_995_000 -> "4.995"."""
    whole, _, frac = money_format(micro).partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


class LoginForm(AuthenticationForm):
    """Django's login form, matching emails the way sign-up stores them (lower case)."""

    def clean_username(self) -> str:
        return (self.cleaned_data.get("username") or "").strip().lower()


class SignupForm(forms.Form):
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=" ".join(password_validation.password_validators_help_texts()),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    org_name = forms.CharField(
        label="Organisation name", max_length=120, help_text="Your company or team."
    )
    is_buyer = forms.BooleanField(
        label="We buy tokens", required=False, initial=True, help_text="Top up and bid."
    )
    is_provider = forms.BooleanField(
        label="We sell tokens", required=False, help_text="Offer inference capacity."
    )

    def clean(self):
        cleaned = super().clean()
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2:
            if password1 != password2:
                self.add_error("password2", "The two passwords differ.")
            else:
                # Validators such as "too similar to the email" need the would-be user.
                candidate = User(email=cleaned.get("email") or "")
                try:
                    password_validation.validate_password(password2, user=candidate)
                except forms.ValidationError as error:
                    self.add_error("password1", error)
        return cleaned


class OrgCreateForm(forms.Form):
    name = forms.CharField(label="Organisation name", max_length=120)
    is_buyer = forms.BooleanField(label="We buy tokens", required=False, initial=True)
    is_provider = forms.BooleanField(label="We sell tokens", required=False)


class OrgSwitchForm(forms.Form):
    org_id = forms.IntegerField(min_value=1)


class TopUpForm(forms.Form):
    amount = forms.CharField(
        label="Amount (USD)",
        max_length=20,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "50.00"}),
    )
    payment_method = forms.ChoiceField(
        label="Test card", choices=TEST_CARDS, initial="pm_card_visa", widget=forms.RadioSelect
    )
    # Made when the form is drawn, so a double click or a resubmitted page reaches topup_create
    # with the same key and returns the first top-up instead of paying twice.
    idempotency_key = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, *args, test_cards: bool, **kwargs):
        super().__init__(*args, **kwargs)
        low, high = settings.TOPUP_MIN_MICRO, settings.TOPUP_MAX_MICRO
        self.fields[
            "amount"
        ].help_text = f"Between {money_display(low)} and {money_display(high)}, in whole cents."
        if not test_cards:
            del self.fields["payment_method"]

    def clean_amount(self) -> int:
        return cents_amount_parse(self.cleaned_data["amount"])


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What the key is for, e.g. “billing job”.")
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, initial=[Scope.READ]
    )
    expires_on = forms.DateField(
        label="Valid through (UTC)",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional. The key stops working at the end of this day.",
    )

    def __init__(self, *args, allowed_scopes: frozenset[str], **kwargs):
        super().__init__(*args, **kwargs)
        # Offer only what this member may grant; the service refuses anything else anyway.
        self.fields["scopes"].choices = [
            (value, f"{label} ({value})")
            for value, label in Scope.choices
            if value in allowed_scopes
        ]

    @property
    def expires_at(self) -> datetime.datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        next_midnight = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time())
        return next_midnight.replace(tzinfo=datetime.UTC)


MAX_LOTS_IN_A_FORM = 2_147_483_647  # the column is a 32-bit integer
MAX_TOKENS_PER_DAY_IN_A_FORM = 9_223_372_036_854_775_807  # a 64-bit integer


class OrderTicketForm(forms.Form):
    """An order as a person types it; order_place and order_preview decide every rule."""

    side = forms.ChoiceField(
        choices=Order.Side.choices, initial=Order.Side.BUY, widget=forms.RadioSelect
    )
    type = forms.ChoiceField(label="Type", choices=Order.Type.choices, initial=Order.Type.LIMIT)
    price = forms.CharField(
        label="Price (USD per 1M tokens)",
        required=False,
        max_length=24,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    lots = forms.IntegerField(
        label="Lots",
        min_value=1,
        max_value=MAX_LOTS_IN_A_FORM,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "autocomplete": "off"}),
    )
    tif = forms.ChoiceField(
        label="Time in force",
        required=False,
        # Blank lets order_place choose: GTC for a limit order, IOC for a market order.
        choices=[
            ("", "Default"),
            *((value, f"{value}: {label.lower()}") for value, label in Order.TimeInForce.choices),
        ],
    )
    post_only = forms.BooleanField(
        label="Post only", required=False, help_text="Rest on the book or be rejected; never take."
    )
    # Made when the ticket is drawn: a double click places one order, not two.
    idempotency_key = forms.UUIDField(widget=forms.HiddenInput, required=False)

    def clean_price(self) -> int | None:
        text = (self.cleaned_data.get("price") or "").strip()
        if not text:
            return None
        try:
            price_micro = money_parse(text)
        except UnitError:
            raise forms.ValidationError("Enter a price in US dollars, such as 5.00.") from None
        if price_micro <= 0:
            raise forms.ValidationError("Enter a price above zero.")
        return price_micro

    def service_fields(self) -> dict:
        """The ticket as order_place and order_preview take it, less the market."""
        data = self.cleaned_data
        return {
            "side": data["side"],
            "type": data["type"],
            "tif": data["tif"] or None,
            "price_micro": data["price"],
            "lots": data["lots"],
            "post_only": data["post_only"],
        }


class EndpointForm(forms.Form):
    """A provider's endpoint in one market; endpoint_register checks the URL and the models."""

    market = forms.ChoiceField(label="Market")
    models = forms.CharField(
        label="Models served",
        max_length=2_000,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
        help_text="Model names, separated by commas; the market's tier must admit each.",
    )
    base_url = forms.CharField(
        label="Base URL",
        max_length=500,
        widget=forms.URLInput(attrs={"placeholder": "https://inference.example.com/v1"}),
        help_text="OpenAI-compatible, ending in /v1.",
    )
    capacity_tokens_per_day = forms.IntegerField(
        label="Capacity (billable tokens per day)",
        min_value=1,
        max_value=MAX_TOKENS_PER_DAY_IN_A_FORM,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )

    def __init__(self, *args, markets, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["market"].choices = [
            (market.id, f"{market.symbol} · {market.tier.name}, {market.region.name}")
            for market in markets
        ]

    def clean_market(self) -> int:
        return int(self.cleaned_data["market"])

    def clean_models(self) -> list[str]:
        return [name.strip() for name in self.cleaned_data["models"].split(",") if name.strip()]


MAX_STATEMENT_DAYS = 366  # as the REST API allows


def _period_bound(text: str, *, is_end: bool) -> datetime.datetime:
    """A day (UTC) or an exact ISO 8601 instant; a day as the end means through its last moment."""
    try:
        day = datetime.date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        day = None
    if day is not None:
        if is_end:
            day += datetime.timedelta(days=1)
        return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)
    moment = parse_datetime(text) if len(text) > 10 else None
    if moment is None:
        raise forms.ValidationError("Enter a date such as 2026-01-31.")
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


class StatementPeriodForm(forms.Form):
    """A statement's period, [start, end): days in UTC with both ends included, or instants.

    Left blank, the period is the current UTC month so far.
    """

    period_start = forms.CharField(
        label="From (UTC)",
        required=False,
        max_length=40,
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    period_end = forms.CharField(
        label="Through (UTC)",
        required=False,
        max_length=40,
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def __init__(self, *args, now: datetime.datetime, **kwargs):
        super().__init__(*args, **kwargs)
        self.now = now

    def clean_period_start(self) -> datetime.datetime:
        text = (self.cleaned_data.get("period_start") or "").strip()
        if not text:
            return self.now.astimezone(datetime.UTC).replace(
                day=1, hour=0, minute=0, second=0, microsecond=0
            )
        return _period_bound(text, is_end=False)

    def clean_period_end(self) -> datetime.datetime:
        text = (self.cleaned_data.get("period_end") or "").strip()
        return _period_bound(text, is_end=True) if text else self.now

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("period_start"), cleaned.get("period_end")
        if start and end:
            if end <= start:
                self.add_error("period_end", "End on or after the start.")
            elif end - start > datetime.timedelta(days=MAX_STATEMENT_DAYS):
                self.add_error(
                    "period_end", f"A statement covers at most {MAX_STATEMENT_DAYS} days."
                )
        return cleaned


class PayoutAccountForm(forms.Form):
    """A provider's payout terms; payout_account_connect records them."""

    payout_minimum = forms.CharField(
        label="Minimum (USD)",
        required=False,
        max_length=20,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "0.00"}),
        help_text="Scheduled payouts wait until earnings reach it. Blank means no minimum.",
    )
    schedule = forms.ChoiceField(
        label="Schedule",
        choices=PayoutAccount.Schedule.choices,
        initial=PayoutAccount.Schedule.MANUAL,
    )

    def clean_payout_minimum(self) -> int:
        text = (self.cleaned_data.get("payout_minimum") or "").strip()
        return cents_amount_parse(text, allow_zero=True) if text else 0


class PayoutRequestForm(forms.Form):
    amount = forms.CharField(
        label="Amount (USD)",
        required=False,
        max_length=20,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "All earned"}),
        help_text="In whole cents. Blank pays out everything earned.",
    )
    # Made when the form is drawn, so a double click makes one payout, not two.
    idempotency_key = forms.UUIDField(widget=forms.HiddenInput)

    def clean_amount(self) -> int | None:
        text = (self.cleaned_data.get("amount") or "").strip()
        return cents_amount_parse(text, example="120.00") if text else None


class WithdrawalForm(forms.Form):
    amount = forms.CharField(
        label="Amount (USD)",
        max_length=20,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "25.00"}),
        help_text="In whole cents, from the available balance.",
    )
    # Made when the form is drawn, so a double click withdraws once.
    idempotency_key = forms.UUIDField(widget=forms.HiddenInput)

    def clean_amount(self) -> int:
        return cents_amount_parse(self.cleaned_data["amount"], example="25.00")
