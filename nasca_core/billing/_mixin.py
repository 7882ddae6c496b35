"""Methods Nasca gains for credits and Stripe."""

from __future__ import annotations


class BillingMixin:
    """Placeholder until credits land."""
