"""The Lua scripts, loaded once from package data with the shared helpers prepended."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

NAMES = ("reserve", "settle", "release", "snapshot", "grant", "revoke_to", "load_config", "save_config",
         "subscription", "tally", "samples", "boosts", "claim",
         "pool_take", "pool_release", "pool_snapshot", "pool_charge")


@cache
def source(name: str) -> str:
    lua = files("nasca_core.stores") / "lua"
    body = (lua / f"{name}.lua").read_text(encoding="utf-8")
    return helpers((lua / "_lib.lua").read_text(encoding="utf-8"), body) + "\n" + body


def helpers(lib: str, body: str) -> str:
    """The lib's header and only the helpers ``body`` calls (with those they call): each local
    function is a closure the script builds on every run. Helpers call only earlier ones."""
    head, *chunks = re.split(r"(?m)^(?=local function )", lib)
    names = [chunk.split()[2].split("(")[0] for chunk in chunks]
    text, keep = body, set()
    for name, chunk in reversed(list(zip(names, chunks, strict=True))):
        if re.search(rf"\b{name}\(", text):
            keep.add(name)
            text += chunk
    return head + "".join(chunk for name, chunk in zip(names, chunks, strict=True) if name in keep)
