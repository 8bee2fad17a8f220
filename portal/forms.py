"""Portal forms. They check shape only (STYLE.md §2); the services decide every business rule,
and `form_apply_error` puts what a service refused back on the form the person filled in."""

import datetime

from django import forms
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm

from accounts.models import Scope, User
from core.errors import ApplicationError
from core.units import UnitError, money_display, money_parse

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
        try:
            amount_micro = money_parse(self.cleaned_data["amount"], places=2)
        except UnitError as error:
            if "decimal places" in str(error):
                raise forms.ValidationError("Use whole cents, such as 50.00.") from None
            raise forms.ValidationError("Enter an amount in US dollars, such as 50.00.") from None
        if amount_micro <= 0:
            raise forms.ValidationError("Enter an amount above zero.")
        return amount_micro


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
