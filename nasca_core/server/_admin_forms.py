"""What the dashboard's forms share: reading fields, a failed form shown inline, and the
words that explain each funnel number. No I/O."""

from __future__ import annotations

from starlette.datastructures import FormData

from nasca_core._errors import InvalidInputError

# Shown beside each step of the funnel: what is counted, and what its rate is against.
FUNNEL_HELP = {
    "blocked": "Calls stopped by a spend limit before reaching the provider. Each block is one "
               "prompt: the steps below count prompts, not clicks.",
    "prompt_shown": "Blocks whose upgrade page was opened (a reload or a second look counts once). "
                    "Rate: of the blocks.",
    "checkout_started": "Prompts where the user picked a pack or plan and Stripe Checkout opened. "
                        "Rate: of the prompts shown.",
    "purchase_completed": "Prompts that ended in a paid purchase (Stripe's webhook granted it). "
                          "Rate: of the checkouts started.",
    "dismissed": "Prompts closed with \u201cNot now\u201d or \u00d7 without buying. "
                 "Rate: of the prompts shown.",
}


class FormError:
    """A form that was not saved: which one, why, and what was typed (to show it again)."""

    __slots__ = ("form", "message", "values")

    def __init__(self, form: str, message: str, values: FormData | dict[str, str] | None = None) -> None:
        self.form = form
        self.message = message
        self.values = {k: v for k, v in (values or {}).items() if isinstance(v, str) and k != "csrf"}

    def value(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)


def field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def required(form: FormData, name: str) -> str:
    value = field(form, name)
    if value is None:
        raise InvalidInputError(f"{name} is required")
    return value
