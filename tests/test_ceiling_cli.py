"""``nasca ceiling`` through the real CLI entry point against a real Redis: show, set and off
are live for the app's process on the same store, and bad input changes nothing."""

from __future__ import annotations

import json
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from nasca_core import Nasca, NascaCeilingError, Tier
from nasca_core.cli import main

pytestmark = pytest.mark.redis

TOML = """
namespace = "{namespace}"
store = "{store}"
default_tier = "free"

[tiers.free]
monthly = 20
"""


@pytest.fixture
def config(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "nasca.toml"
    path.write_text(TOML.format(namespace=f"ceil{abs(hash(request.node.name)) % 10**8}", store=redis_url))
    return path


def app(config: Path) -> Nasca:
    import tomllib

    data = tomllib.loads(config.read_text())
    return Nasca(data["store"], namespace=data["namespace"], default_tier="free",
                 tiers={"free": Tier(monthly=20)}, settle_in_background=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_show_set_and_off_are_live(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = app(config)
    at = ["--config", str(config)]
    assert as_json(capsys, "ceiling", *at) == {"ceiling": None, "source": "this process's default"}
    code, out, _ = run(capsys, "ceiling", *at)
    assert code == 0 and out.startswith("ceiling: off\n")
    assert "nothing stored; an app process may still set one in code" in out

    shown = as_json(capsys, "ceiling", "set", "--daily", "0.05", "--monthly", "200", "--warn-at", "0.8", *at)
    assert shown["daily"]["limit"] == "0.05" and shown["monthly"]["limit"] == "200"
    assert shown["weekly"] is None and shown["warn_at"] == [0.8]
    assert n.ceiling_status() is not None  # the app's process sees it at once

    for _ in range(5):
        n.settle(n.reserve("0.01", user="u1"), "0.01")
    with pytest.raises(NascaCeilingError):
        n.reserve("0.01", user="u2")  # another user: the app's budget is spent
    n.flush()
    code, out, _ = run(capsys, "ceiling", "show", *at)
    assert code == 0
    assert "ceiling: daily $0.05, monthly $200, warns at 80%" in out
    assert "blocked: yes" in out
    assert "daily: $0.05 spent, $0 held of $0.05: $0 left, resets " in out
    shown = as_json(capsys, "ceiling", *at)
    assert shown["daily"]["spent"] == "0.05" and shown["daily"]["remaining"] == "0"
    assert shown["monthly"]["remaining"] == "199.95"
    # New limits replace the old ones; the owner's warnings stay unless given anew.
    shown = as_json(capsys, "ceiling", "set", "--weekly", "1", *at)
    assert shown["daily"] is None and shown["weekly"]["remaining"] == "0.95" and shown["warn_at"] == [0.8]
    assert as_json(capsys, "ceiling", "set", "--weekly", "1", "--no-warn", *at)["warn_at"] == []

    assert as_json(capsys, "ceiling", "off", *at) == {"ceiling": None, "source": "stored off"}
    n.settle(n.reserve("0.01", user="u2"), "0.01")  # no ceiling: only the user's limits
    assert n.ceiling_status() is None
    n.close()


def test_an_unreadable_stored_ceiling_is_shown_as_refusing(config: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    n = app(config)
    n.live.save("ceiling", "app", '{"daily": {"amount": "1", "per": "seat"}}')  # a newer version wrote it
    at = ["--config", str(config)]
    code, out, _ = run(capsys, "ceiling", *at)
    assert code == 0 and out.startswith("ceiling: unreadable: calls refused\n"), out
    assert "blocked: yes" in out and "$1E-9" not in out and "daily:" not in out
    shown = as_json(capsys, "ceiling", *at)
    assert shown["source"] == "unreadable" and shown["daily"] is None
    shown = as_json(capsys, "ceiling", "set", "--daily", "1", *at)  # set replaces it
    assert shown["source"] == "stored" and shown["daily"]["limit"] == "1" and shown["warn_at"] == []
    n.settle(n.reserve("0.01", user="u1"), "0.01")
    n.close()


def test_bad_input_changes_nothing(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = ["--config", str(config)]
    as_json(capsys, "ceiling", "set", "--daily", "1", *at)
    for argv, says in ((["set"], "give the ceiling's limits"),
                       (["off", "--daily", "2"], "takes no limits"),
                       (["set", "--daily", "-1"], "daily"),
                       (["set", "--daily", "1", "--warn-at", "1.5"], "warn_at")):
        code, _, err = run(capsys, "ceiling", *argv, *at)
        assert code == 2 and says in err, err
    shown = as_json(capsys, "ceiling", *at)
    assert shown["daily"]["limit"] == "1" and shown["monthly"] is None


def test_the_installed_command_on_a_sqlite_file(tmp_path: Path) -> None:
    """The ``nasca`` console script itself, in a process of its own, with ``--store`` and no config."""
    import shutil
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path}/ledger.db"
    exe = shutil.which("nasca", path=str(Path(sys.executable).parent))
    assert exe is not None

    def nasca(*argv: str) -> Any:
        done = subprocess.run([exe, "ceiling", *argv, "--store", store, "--namespace", "app", "--json"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert nasca("set", "--monthly", "200", "--warn-at", "0.9")["monthly"]["remaining"] == "200"
    n = Nasca(store, namespace="app", tiers={"free": Tier()}, default_tier="free")
    n.settle(n.reserve("1.25", user="u1"), "1.25")
    n.close()  # its chunk's hold dropped
    shown = nasca()
    assert (shown["monthly"]["spent"], shown["monthly"]["held"], shown["monthly"]["remaining"]) == (
        "1.25", "0", "198.75")
    assert nasca("off") == {"ceiling": None, "source": "stored off"}
    assert nasca("unset") == {"ceiling": None, "source": "this process's default"}


CEILING_TOML = """
[ceiling]
daily = 1
monthly = 30
warn_at = [0.8]
"""


def test_nasca_toml_ceiling_is_the_clis_default(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's Nasca (``build_nasca``) carries nasca.toml's [ceiling], as the app's carries its
    ``ceiling=``: `nasca ceiling` shows it, `set` keeps its warnings, `off` overrides it in the
    store, `unset` removes the override so each process's own default stands again."""
    config.write_text(config.read_text() + CEILING_TOML)
    at = ["--config", str(config)]
    shown = as_json(capsys, "ceiling", *at)
    assert shown["daily"]["limit"] == "1" and shown["monthly"]["limit"] == "30"
    assert shown["warn_at"] == [0.8] and shown["source"] == "this process's default"
    code, out, _ = run(capsys, "ceiling", *at)
    assert code == 0 and "source: nasca.toml [ceiling] (nothing stored" in out

    shown = as_json(capsys, "ceiling", "set", "--daily", "20", *at)  # the file's warn_at stays
    assert shown["daily"]["limit"] == "20" and shown["warn_at"] == [0.8] and shown["source"] == "stored"
    assert as_json(capsys, "ceiling", "off", *at) == {"ceiling": None, "source": "stored off"}
    code, out, _ = run(capsys, "ceiling", *at)
    assert "turned off in the store for every process" in out

    shown = as_json(capsys, "ceiling", "unset", *at)  # back to the file's
    assert shown["daily"]["limit"] == "1" and shown["source"] == "this process's default"
    # The app's process, with its own ceiling= in code, follows the store the same way.
    data = tomllib.loads(config.read_text())
    n = Nasca(data["store"], namespace=data["namespace"], default_tier="free",
              tiers={"free": Tier(monthly=20)}, settle_in_background=False, ceiling=Tier(daily="0.02"))
    status = n.ceiling_status()
    assert status is not None and status.daily is not None and status.daily.limit == Decimal("0.02")
    as_json(capsys, "ceiling", "set", "--daily", "5", *at)
    status = n.ceiling_status()
    assert status is not None and status.daily is not None and status.daily.limit == 5
    assert status.source == "stored"
    n.close()


def test_build_nasca_takes_the_ceiling_from_toml_or_env() -> None:
    from nasca_core._errors import ConfigurationError
    from nasca_core.server._config import ServeConfig, build_nasca

    base = {"store": "memory://", "tiers": {"free": {"monthly": 20}}}
    n = build_nasca(ServeConfig.parse({**base, "ceiling": {"daily": 15, "warn_at": [0.5]}}), {})
    assert n.live.current().ceiling == Tier(daily=15, warn_at=(0.5,))
    n.close()
    n = build_nasca(ServeConfig.parse(base), {"NASCA_CEILING": '{"monthly": 200}'})
    assert n.live.current().ceiling == Tier(monthly=200)
    n.close()
    n = build_nasca(ServeConfig.parse(base), {})
    assert n.live.current().ceiling is None
    n.close()
    for bad, env in (({"ceiling": {"daily": 1, "credits_cover": ["daily"]}}, {}),
                     ({"ceiling": {"daily": -1}}, {}), ({}, {"NASCA_CEILING": "{oops"}),
                     ({"ceiling": {}}, {})):
        with pytest.raises(ConfigurationError, match="ceiling"):
            build_nasca(ServeConfig.parse({**base, **bad}), env)
    with pytest.raises(ConfigurationError, match="ceiling"):
        ServeConfig.parse({**base, "ceiling": "15"})
    # What a remote client is told is where the server's ceiling goes.
    with pytest.raises(ConfigurationError, match=r"server owns ceiling: set them in its nasca.toml"):
        Nasca("http://127.0.0.1:9", ceiling=Tier(daily=1))
