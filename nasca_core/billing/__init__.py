"""Credits and Stripe (issue 6): packs, plans, lots, checkout and webhooks."""

from nasca_core.billing._mixin import BillingMixin

__all__ = ["BillingMixin"]
