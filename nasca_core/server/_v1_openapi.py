"""The OpenAPI 3.1 schema of ``/v1``, built from the pydantic bodies (``remote/_wire.py``):
Starlette has no schema of its own beyond docstring YAML, and the bodies already are the
contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from nasca_core._usage import Usage
from nasca_core.billing import CreditGrant
from nasca_core.remote._wire import (
    ChargeReply,
    ConfigReply,
    ErrorReply,
    GrantBody,
    OkReply,
    ReleaseBody,
    ReserveBody,
    ReserveReply,
    SettleBody,
    TierBody,
    UserTierBody,
)

# path, method, request body, reply, summary, the error codes it may answer
_OPS: tuple[tuple[str, str, type[BaseModel] | None, type[BaseModel], str, tuple[int, ...]], ...] = (
    (
        "/v1/reserve",
        "post",
        ReserveBody,
        ReserveReply,
        "Hold an amount (nanos or estimate), or a model call the server estimates",
        (402, 409, 422, 503),
    ),
    (
        "/v1/settle",
        "post",
        SettleBody,
        ChargeReply,
        "Replace a hold (as /v1/reserve signed it) by the real cost, or by model + usage priced "
        "here; a retried settle of the same hold is charged once",
        (422, 503),
    ),
    ("/v1/release", "post", ReleaseBody, OkReply, "Drop the hold of a call that cost nothing", (422,)),
    ("/v1/usage", "get", None, Usage, "A user's spend, limits, resets and credits", (422, 503)),
    ("/v1/config", "get", None, ConfigReply, "The tiers and prices in force", (503,)),
    ("/v1/tiers", "post", TierBody, OkReply, "Define, change or remove a tier (admin key)", (403, 422, 503)),
    ("/v1/user-tier", "post", UserTierBody, OkReply, "Put a user on a tier, null clears it (admin key)",
     (403, 422, 503)),
    ("/v1/credits", "post", GrantBody, CreditGrant,
     "Grant credits, idempotent by key (admin key); paid defaults to 0: a bonus", (403, 422, 503)),
)
_REF = "#/components/schemas/{model}"


def openapi() -> dict[str, Any]:
    """The schema document (a JSON-ready dict)."""
    models = {m for op in _OPS for m in (op[2], op[3]) if m is not None} | {ErrorReply}
    refs, defs = models_json_schema(
        [
            (m, "validation" if m.__name__.endswith("Body") else "serialization")
            for m in sorted(models, key=lambda m: m.__name__)
        ],
        ref_template=_REF,
    )
    paths: dict[str, Any] = {}
    for path, method, body, reply, summary, errors in _OPS:
        op: dict[str, Any] = {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": _content(refs[(reply, "serialization")]["$ref"]),
                "401": _content(_REF.format(model="ErrorReply"), "wrong or missing API key"),
                "429": _content(_REF.format(model="ErrorReply"), "rate limited (Retry-After)"),
                **{str(s): _content(_REF.format(model="ErrorReply"), "error") for s in errors},
            },
        }
        if body is not None:
            op["requestBody"] = {"required": True, **_content(refs[(body, "validation")]["$ref"])}
        else:
            op["parameters"] = [
                {"name": n, "in": "query", "required": n == "user", "schema": {"type": "string"}}
                for n in (("user", "tier") if path == "/v1/usage" else ())
            ]
        paths[path] = {method: op}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Nasca ledger API",
            "version": "1",
            "description": "Per-end-user AI spend limits over HTTP. Money is integer nano-dollars "
            "(*_nanos) or decimal strings of dollars.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _content(ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}
