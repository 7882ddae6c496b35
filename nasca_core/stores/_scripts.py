"""The Lua scripts, loaded once from package data with the shared helpers prepended."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

NAMES = ("reserve", "settle", "release", "snapshot", "grant", "revoke", "load_config", "save_config",
         "subscription")


@cache
def source(name: str) -> str:
    lua = files("nasca_core.stores") / "lua"
    lib = (lua / "_lib.lua").read_text(encoding="utf-8")
    return lib + "\n" + (lua / f"{name}.lua").read_text(encoding="utf-8")
