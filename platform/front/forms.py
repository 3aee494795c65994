"""The dashboard's forms. Each validates what a person typed and says what to fix in words."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from accounts.forms import ThrottledLogin

from . import prompt_format
from .runs import SORTS, STATUSES


class SignupForm(UserCreationForm):
    email = forms.EmailField(help_text="Used only to reset your password.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        if get_user_model().objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(
                "An account with this email address exists already; log in or reset its password."
            )
        return email


class ThrottledLoginForm(ThrottledLogin, AuthenticationForm):
    """Django's login form, refusing attempts once a username or address has failed too often."""


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="Where the key will be used, e.g. “laptop” or “CI”, so you can tell keys apart."
    )


class RunFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "Any status"), *STATUSES], required=False)
    base_model = forms.ChoiceField(choices=[("", "Any base model")], required=False, label="Base model")
    sort = forms.ChoiceField(choices=SORTS, required=False, label="Sort by")

    def __init__(self, data, base_models: list[str]):
        super().__init__(data)
        field = self.fields["base_model"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "Any base model"), *((m, m) for m in base_models)]


DAY = 86400
TTL_CHOICES = [
    ("", "Keep forever"),
    (str(DAY), "1 day"),
    (str(7 * DAY), "7 days"),
    (str(30 * DAY), "30 days"),
    (str(90 * DAY), "90 days"),
    (str(365 * DAY), "1 year"),
]


class CheckpointTtlForm(forms.Form):
    ttl_seconds = forms.TypedChoiceField(
        choices=TTL_CHOICES, coerce=int, empty_value=None, required=False, label="Expires after"
    )


class PlaygroundForm(forms.Form):
    """What a person sets in the sampling playground; the intake checks the rest (prompt length
    against the model's context, and so on) exactly as it does for the API."""

    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        max_length=20_000,
        strip=False,  # a prompt format may end in a newline the model must see
        help_text="Plain text, encoded with the base model's own tokenizer.",
    )
    max_tokens = forms.IntegerField(min_value=1, max_value=512, initial=32, label="Max tokens")
    temperature = forms.FloatField(min_value=0.0, max_value=5.0, initial=1.0, help_text="0 picks the likeliest token.")
    top_p = forms.FloatField(min_value=0.0, max_value=1.0, initial=1.0, label="Top p")
    top_k = forms.IntegerField(min_value=-1, initial=-1, label="Top k", help_text="-1: off.")
    seed = forms.IntegerField(required=False, min_value=0, help_text="Optional: the same seed gives the same output.")
    num_samples = forms.IntegerField(min_value=1, max_value=8, initial=1, label="Samples")
    stop = forms.CharField(
        required=False,
        strip=False,
        max_length=1_000,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        label="Stop sequences",
        help_text=r"One per line; write \n for a newline, \t for a tab. Sampling stops once one appears.",
    )

    MAX_STOPS = 8

    def clean_stop(self) -> list[str]:
        """The stop strings, one per line, escapes undone; blank lines ignored."""
        lines = [line for line in self.cleaned_data["stop"].splitlines() if line]
        stops = [prompt_format.unescape(line) for line in lines]
        if len(stops) > self.MAX_STOPS:
            raise forms.ValidationError(f"At most {self.MAX_STOPS} stop sequences.")
        return stops

    def sampling_params(self) -> dict:
        """num_samples and the wire's sampling_params, from the cleaned form."""
        data = dict(self.cleaned_data)
        data.pop("prompt")
        if data["seed"] is None:
            data.pop("seed")
        if not data["stop"]:
            data.pop("stop")
        return data

    @staticmethod
    def stop_text(stops: list[str] | str | None) -> str:
        """Stop strings as the field shows them (the inverse of `clean_stop`)."""
        if isinstance(stops, str):
            stops = [stops]
        return "\n".join(prompt_format.escape(s) for s in stops or [] if isinstance(s, str))


USAGE_WINDOWS = [(7, "Last 7 days"), (30, "Last 30 days"), (90, "Last 90 days"), (366, "Last year")]


class UsageWindowForm(forms.Form):
    days = forms.TypedChoiceField(choices=USAGE_WINDOWS, coerce=int, initial=30, required=False, label="Period")
