"""The ledger API under ``/v1``: reserve, settle, release, usage, tiers and credits over
HTTP, for apps that can't reach the store (``nasca_core.remote`` is its Python client).

    POST /v1/reserve     ReserveBody  -> ReserveReply     hold an amount, or a model call
    POST /v1/settle      SettleBody   -> ChargeReply      idempotent by hold id
    POST /v1/release     ReleaseBody  -> OkReply
    GET  /v1/usage?user=&tier=        -> Usage
    GET  /v1/config                   -> ConfigReply      tiers and prices, for clients
    POST /v1/tiers       TierBody     -> OkReply          set_tier (tier null: remove)       admin
    POST /v1/user-tier   UserTierBody -> OkReply          set_user_tier                      admin
    POST /v1/credits     GrantBody    -> CreditGrant      billing.grant_credits              admin
    GET  /v1/openapi.json                                 the schema (no key needed)

Every route but the schema needs ``Authorization: Bearer <key>``: one of NASCA_API_KEYS, or
for the routes marked admin one of NASCA_ADMIN_API_KEYS (``_v1_keys``); a plain key there
is 403. Errors are ``ErrorReply`` JSON with the status of its code (``_wire.STATUS``): a
block is 402 with the upgrade prompt's fields and the signed upgrade link. The hold a
reserve returns is signed (``_v1_holds``): settle and release take it back unaltered.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from nasca_core._config import Tier
from nasca_core._errors import InvalidInputError, NascaError
from nasca_core._fallback import ACCOUNT_SUFFIX, Account
from nasca_core._fallback_calls import astart_with_fallback
from nasca_core._types import Reservation
from nasca_core.pricing import TokenUsage
from nasca_core.remote._wire import (
    STATUS,
    ChargeReply,
    ConfigReply,
    ErrorReply,
    GrantBody,
    Hold,
    OkReply,
    ReleaseBody,
    ReserveBody,
    ReserveReply,
    SettleBody,
    TierBody,
    UserTierBody,
    error_reply,
)
from nasca_core.server._v1_holds import UNCHECKED, HoldSigner
from nasca_core.server._v1_keys import ApiKeys
from nasca_core.server._v1_openapi import openapi

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca

log = logging.getLogger("nasca")
B = TypeVar("B", bound=BaseModel)
_JSON = "application/json"
_REPLIES = 65_536  # settle replies kept, so a retried settle answers the split that landed


def _error(code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        ErrorReply(error=code, message=message).model_dump_json(exclude_none=True),
        status_code=STATUS[code],
        media_type=_JSON,
        headers=headers,
    )


class V1Routes:
    """The ``/v1`` routes over one Nasca, behind ``keys``; holds signed with ``secrets``
    (the server secret first, then previous ones)."""

    def __init__(self, nasca: Nasca, keys: ApiKeys, secrets: Sequence[bytes]) -> None:
        self.nasca, self.keys = nasca, keys
        self.holds = HoldSigner(secrets)
        self._schema: dict[str, Any] | None = None
        self._replies: OrderedDict[str, ChargeReply] = OrderedDict()

    def routes(self) -> list[BaseRoute]:
        return [
            Mount(
                "/v1",
                routes=[
                    Route("/reserve", self._post(ReserveBody, self.reserve), methods=["POST"]),
                    Route("/settle", self._post(SettleBody, self.settle), methods=["POST"]),
                    Route("/release", self._post(ReleaseBody, self.release), methods=["POST"]),
                    Route("/tiers", self._post(TierBody, self.set_tier, admin=True), methods=["POST"]),
                    Route("/user-tier", self._post(UserTierBody, self.set_user_tier, admin=True),
                          methods=["POST"]),
                    Route("/credits", self._post(GrantBody, self.grant, admin=True), methods=["POST"]),
                    Route("/usage", self._get(self.usage), methods=["GET"]),
                    Route("/config", self._get(self.config), methods=["GET"]),
                    Route("/openapi.json", self.schema, methods=["GET"]),
                ],
                name="v1",
            )
        ]

    # -- the edge: key, rate, body, errors ----------------------------------------------
    def _refused(self, request: Request, admin: bool = False) -> Response | None:
        if not self.keys:
            return _error("unauthorized", "this server has no API keys: set NASCA_API_KEYS")
        key = self.keys.find(request.headers.get("authorization"))
        if key is None:
            return _error(
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer <key>)",
                {"WWW-Authenticate": "Bearer"},
            )
        if admin and not self.keys.is_admin(key):
            return _error("forbidden", "this route needs an admin key (NASCA_ADMIN_API_KEYS)")
        wait = self.keys.admit(key)
        if wait > 0:
            return _error(
                "rate_limited",
                f"too many requests for this API key: retry in {wait:.3f}s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        return None

    async def _answer(self, run: Awaitable[BaseModel]) -> Response:
        try:
            reply = await run
        except NascaError as exc:
            err = error_reply(exc)
            if err.error == "store_error":
                log.warning("nasca: /v1 store error: %s", exc)
            headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after else None
            return Response(
                err.model_dump_json(exclude_none=True),
                status_code=STATUS[err.error],
                media_type=_JSON,
                headers=headers,
            )
        return Response(reply.model_dump_json(), media_type=_JSON)

    def _post(self, body: type[B], handler: Callable[[B], Awaitable[BaseModel]],
              admin: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if (refused := self._refused(request, admin)) is not None:
                return refused
            try:
                parsed = body.model_validate_json(await request.body())
            except ValidationError as exc:
                return _error("invalid_input", _first_problem(exc))
            return await self._answer(handler(parsed))

        return endpoint

    def _get(
        self, handler: Callable[[Request], Awaitable[BaseModel]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if (refused := self._refused(request)) is not None:
                return refused
            return await self._answer(handler(request))

        return endpoint

    async def schema(self, request: Request) -> Response:
        if self._schema is None:
            self._schema = openapi()
        return JSONResponse(self._schema)

    # -- the operations: the ledger's public API ----------------------------------------
    def _reservation(self, hold: Hold) -> Reservation:
        hold_id = self.holds.verify(hold)
        if hold_id is None:
            raise InvalidInputError(
                "hold: altered, or not signed by this server: send back the hold /v1/reserve "
                "returned, every field as it came"
            )
        keys = self.nasca.user_keys(hold.user)
        if hold_id.startswith(UNCHECKED):  # admitted by the client alone: nothing is held here
            if hold.tier.endswith(ACCOUNT_SUFFIX):
                raise InvalidInputError("hold: only the server admits a call on a fallback allowance")
            return Reservation(hold.user, hold.tier, hold_id, 0, keys, degraded=True)
        if hold.tier.endswith(ACCOUNT_SUFFIX):  # held on the fallback allowance (signed: not a claim)
            keys = Account(Tier(), ()).keys(keys)  # the tier is unused: only where the keys move
        return Reservation(hold.user, hold.tier, hold_id, hold.estimate_nanos, keys,
                           anchor=hold.anchor, reserved_ms=hold.reserved_ms)

    async def reserve(self, body: ReserveBody) -> ReserveReply:
        n = self.nasca
        model = fell_back = None
        if body.model is not None:
            if body.strict is not None:
                raise InvalidInputError("strict applies to an amount's reserve; a model call's "
                                        "follows the server's strict setting")
            spec: dict[str, Any] = {"prompt_tokens": body.prompt_tokens or 0, "max_tokens": body.max_tokens,
                                    "user": body.user, "tier": body.tier, "cap_output": body.cap_output}
            if body.fallback:
                call, fb = await astart_with_fallback(n, body.model, **spec)
                fell_back = fb.as_dict() if fb is not None else None
            else:
                call = await n.astart_call(body.model, **spec)
            r, model = call.reservation, call.model
        else:
            if body.fallback:
                raise InvalidInputError("fallback applies to a model call's reserve (give model)")
            r = await n.areserve(
                body.estimate, nanos=body.nanos, user=body.user, tier=body.tier, strict=body.strict
            )
        k = r.keys
        windows = (k.day.rpartition(":")[2], k.week.rpartition(":")[2], k.month.rpartition(":")[2])
        return ReserveReply(
            hold=self.holds.sign(Hold(
                user=r.user_id,
                tier=r.tier,
                hold_id=r.hold_id,
                estimate_nanos=r.estimate_nanos,
                anchor=r.anchor,
                reserved_ms=r.reserved_ms,
            )),
            room=r.room,
            degraded=r.degraded,
            windows=windows,
            config_version=n.live.current().version,
            warning=r.warning,
            model=model,
            fallback=fell_back,
        )

    async def settle(self, body: SettleBody) -> ChargeReply:
        r = self._reservation(body.hold)
        if body.model is not None and (body.nanos is not None or body.cost is not None):
            raise InvalidInputError("settle: send model and usage, or an amount, not both")
        if (seen := self._replies.get(r.hold_id)) is not None:
            return seen  # a retry of a settle that landed: the split it landed with, not 0/0
        nanos, tokens = body.nanos, (body.input_tokens, body.output_tokens)
        if body.model is not None:  # priced here, with the table this server reserved with
            usage = (TokenUsage(**body.usage.model_dump()) if body.usage is not None
                     else TokenUsage(input_tokens=body.input_tokens, output_tokens=body.output_tokens))
            nanos = self.nasca.live.current().pricer.cost(body.model, usage)
            tokens = (usage.input_tokens, usage.output_tokens)
        c = await self.nasca.asettle(r, body.cost, nanos=nanos, tokens=tokens)
        reply = ChargeReply(
            cost_nanos=c.cost_nanos,
            tier_nanos=c.tier_nanos,
            credit_nanos=c.credit_nanos,
            deferred=c.deferred,
        )
        if not c.deferred:
            self._replies[r.hold_id] = reply
            if len(self._replies) > _REPLIES:
                self._replies.popitem(last=False)
        return reply

    async def release(self, body: ReleaseBody) -> OkReply:
        r = self._reservation(body.hold)
        if not r.degraded:
            await self.nasca.arelease(r)
        return OkReply()

    async def set_tier(self, body: TierBody) -> OkReply:
        await self.nasca.aset_tier(body.name, body.tier)
        return OkReply()

    async def set_user_tier(self, body: UserTierBody) -> OkReply:
        await self.nasca.aset_user_tier(body.user, body.tier)
        return OkReply()

    async def grant(self, body: GrantBody) -> BaseModel:
        return await self.nasca.billing.agrant_credits(
            body.user,
            body.pack,
            spend=body.spend,
            # no proof of payment travels with a grant: unless the owner states what was paid,
            # it is a bonus (paid 0), never revenue that a pack's price would presume
            paid=body.paid if body.paid is not None else "0",
            currency=body.currency,
            idempotency_key=body.idempotency_key,
        )

    async def usage(self, request: Request) -> BaseModel:
        q = request.query_params
        return await self.nasca.aget_usage(q.get("user") or "", q.get("tier") or None)

    async def config(self, request: Request) -> ConfigReply:
        n = self.nasca
        snap = await n.live.afresh()
        table = snap.pricer.table
        return ConfigReply(
            version=snap.version,
            namespace=n.namespace,
            default_tier=n.default_tier,
            strict=n.strict,
            tiers=dict(snap.tiers),
            prices={m: p.to_dict() for m, p in table.owner_prices.items()},
            aliases=dict(table.aliases),
            unknown_model=snap.pricer.unknown_model,
        )


def _first_problem(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    if not errors:
        return "invalid request body"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', 'invalid')}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )
