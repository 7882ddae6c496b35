"""What is on offer, free of I/O: the constructor's packs and plans, changed by what
``set_pack``/``set_plan`` stored in the live config, and the checks on both."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from nasca_core._errors import ConfigurationError, UnknownPackError, UnknownPlanError, UnknownTierError
from nasca_core.billing._models import BillingPolicy, CreditPack, Plan
from nasca_core.billing._webhook import Catalog

if TYPE_CHECKING:
    from nasca_core._live import ConfigSnapshot

log = logging.getLogger("nasca")

M = TypeVar("M", CreditPack, Plan)


@dataclass(frozen=True)
class Offer:
    """The packs and plans of one config snapshot, with those retired since (webhooks for
    checkouts already under way still honour them)."""

    snapshot: ConfigSnapshot
    packs: Mapping[str, CreditPack]
    plans: Mapping[str, Plan]
    retired_packs: Mapping[str, CreditPack]
    retired_plans: Mapping[str, Plan]

    @classmethod
    def build(cls, snapshot: ConfigSnapshot, packs: Mapping[str, CreditPack],
              plans: Mapping[str, Plan]) -> Offer:
        live_packs, retired_packs = _apply_stored(snapshot.stored.sections.get("pack", {}), CreditPack, packs)
        live_plans, retired_plans = _apply_stored(snapshot.stored.sections.get("plan", {}), Plan, plans)
        return cls(snapshot, live_packs, live_plans, retired_packs, retired_plans)

    def webhook_catalog(self, allow_bonus_credits: bool, policy: BillingPolicy) -> Catalog:
        return Catalog({**self.retired_packs, **self.packs}, {**self.retired_plans, **self.plans},
                       frozenset(self.snapshot.tiers), allow_bonus_credits, policy)

    def pack(self, pack: str | CreditPack) -> CreditPack:
        """The pack on offer. Raises UnknownPackError, ConfigurationError (a CreditPack that
        differs from the one on offer)."""
        pack_id = pack.id if isinstance(pack, CreditPack) else pack
        found = self.packs.get(pack_id) if isinstance(pack_id, str) else None
        if found is None:
            raise UnknownPackError(str(pack_id), self.packs)
        if isinstance(pack, CreditPack) and pack != found:
            raise ConfigurationError(f"pack {pack_id!r} differs from the one on offer: set_pack() it first")
        return found

    def checkout_item(self, item: str | CreditPack | Plan) -> CreditPack | Plan:
        """The pack or plan a checkout sells. Raises UnknownPackError, UnknownPlanError,
        ConfigurationError."""
        if isinstance(item, CreditPack):
            return self.pack(item)
        if isinstance(item, Plan):
            plan = self.plans.get(item.id)
            if plan is None:
                raise UnknownPlanError(item.id, self.plans)
            if plan != item:
                raise ConfigurationError(f"plan {item.id!r} differs from the one on offer: "
                                         "set_plan() it first")
            return plan
        if isinstance(item, str) and item in self.packs:
            return self.packs[item]
        if isinstance(item, str) and item in self.plans:
            return self.plans[item]
        raise UnknownPackError(str(item), [*self.packs, *self.plans])

    def pack_payload(self, pack_id: str, pack: CreditPack | None, allow_bonus_credits: bool) -> str:
        """What set_pack() stores. Raises ConfigurationError, UnknownPackError."""
        if pack is None:
            current = self.packs.get(pack_id)
            if current is None:
                raise UnknownPackError(pack_id, self.packs)
            return json.dumps({"retired": current.model_dump(mode="json")})
        if not isinstance(pack, CreditPack):
            raise ConfigurationError(f"set_pack({pack_id!r}, ...) needs a CreditPack, "
                                     f"got {type(pack).__name__}")
        if pack.id != pack_id:
            raise ConfigurationError(f"set_pack({pack_id!r}, ...) got a pack whose id is {pack.id!r}")
        if pack_id in self.plans:
            raise ConfigurationError(f"{pack_id!r} is already a plan id")
        check_bonus(pack, allow_bonus_credits)
        return pack.model_dump_json()

    def plan_payload(self, plan_id: str, plan: Plan | None) -> str:
        """What set_plan() stores. Raises ConfigurationError, UnknownPlanError, UnknownTierError."""
        if plan is None:
            current = self.plans.get(plan_id)
            if current is None:
                raise UnknownPlanError(plan_id, self.plans)
            return json.dumps({"retired": current.model_dump(mode="json")})
        if not isinstance(plan, Plan):
            raise ConfigurationError(f"set_plan({plan_id!r}, ...) needs a Plan, got {type(plan).__name__}")
        if plan.id != plan_id:
            raise ConfigurationError(f"set_plan({plan_id!r}, ...) got a plan whose id is {plan.id!r}")
        if plan_id in self.packs:
            raise ConfigurationError(f"{plan_id!r} is already a credit pack id")
        if plan.tier not in self.snapshot.tiers:
            raise UnknownTierError(plan.tier, list(self.snapshot.tiers))
        return plan.model_dump_json()


def as_map(items: Any, model: type[M], what: str) -> dict[str, M]:
    """The constructor's packs or plans by id. Raises ConfigurationError."""
    if items is None:
        return {}
    values = list(items.values()) if isinstance(items, Mapping) else list(items)
    out: dict[str, M] = {}
    for value in values:
        if not isinstance(value, model):
            raise ConfigurationError(f"{what} must hold {model.__name__} objects, got {type(value).__name__}")
        if value.id in out:
            raise ConfigurationError(f"{what} has two entries with id {value.id!r}")
        out[value.id] = value
    if isinstance(items, Mapping):
        for key, value in items.items():
            if key != value.id:
                raise ConfigurationError(f"{what}[{key!r}] has id {value.id!r}")
    return out


def check_bonus(pack: CreditPack, allowed: bool) -> None:
    """Raises ConfigurationError for a pack worth more than it costs when that is not allowed."""
    if pack.is_bonus and not allowed:
        raise ConfigurationError(
            f"credit pack {pack.id!r} grants ${pack.spend} of AI spend for ${pack.price}: "
            "allow_bonus_credits=False forbids packs worth more than they cost"
        )


def _apply_stored(stored: Mapping[str, str], model: type[M],
                  base: Mapping[str, M]) -> tuple[dict[str, M], dict[str, M]]:
    live, retired = dict(base), {}
    for name, text in stored.items():
        try:
            data = json.loads(text)
            if isinstance(data, dict) and "retired" in data:
                live.pop(name, None)
                retired[name] = model.model_validate(data["retired"])
            else:
                live[name] = model.model_validate(data)
        except Exception:  # one another version wrote that this one can't read
            log.exception("nasca: ignoring unreadable stored %s %r", model.__name__, name)
    return live, retired
