"""Every public package's ``__all__`` is exactly its public names, sorted the way ruff sorts it.

After httpx's tests/test_exported_members.py: a name that is imported into a package
but left out of ``__all__`` (or listed but gone) fails here, so the contract is what
the package holds. Submodules (``nasca_core.billing`` on ``nasca_core``) are not exports.
"""

from __future__ import annotations

import importlib
import re
import types

import pytest

PUBLIC_PACKAGES = [
    "nasca_core",
    "nasca_core.analytics",
    "nasca_core.billing",
    "nasca_core.otel",
    "nasca_core.pricing",
    "nasca_core.remote",
    "nasca_core.server",
    "nasca_core.stores",
    "nasca_core.testing",
    "nasca_langchain",
    "nasca_llamaindex",
]


def ruff_order(name: str) -> tuple[int, list[int | str]]:
    # RUF022's "isort-style" order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest,
    # each in natural order (so ruff and this test never disagree).
    casing = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return casing, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_all_is_sorted_and_lists_every_public_member(package: str) -> None:
    module = importlib.import_module(package)
    exported = list(module.__all__)
    public = {
        name for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == sorted(exported, key=ruff_order), (
        f"{package}.__all__ is not in ruff's RUF022 order: `ruff check --select RUF022 --fix`")
    assert len(set(exported)) == len(exported), f"{package}.__all__ lists a name twice"
    missing = sorted(public - set(exported), key=ruff_order)
    # A name the package's __getattr__ imports on first use (PEP 562) is defined too.
    gone = sorted((n for n in set(exported) - public if not hasattr(module, n)), key=ruff_order)
    assert not missing, (
        f"{package} has public names that are not in __all__: {missing}. Export them, or keep "
        "them out of the package namespace (a private module, `import typing` then `typing.Any`, "
        "no `from __future__ import annotations` in __init__)"
    )
    assert not gone, f"{package}.__all__ lists names the package does not define: {gone}"


def test_the_ceiling_error_is_exported_and_is_a_block():
    import nasca_core

    assert "NascaCeilingError" in nasca_core.__all__
    assert issubclass(nasca_core.NascaCeilingError, nasca_core.NascaBlockedError)
