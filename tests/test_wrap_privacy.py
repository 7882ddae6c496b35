"""What wrap() sends on to the provider of the end user's id: a stable hash by default,
nothing, or the id itself; and Anthropic's metadata.user_id read as the user. Real openai
and anthropic clients against the local provider server; the assertions read what the
server received."""

from __future__ import annotations

import pytest

from nasca_core import ConfigurationError, Tier
from nasca_core._wrap_request import user_hash
from nasca_core.testing import ProviderServer

MSG = [{"role": "user", "content": "Hello there"}]
CLAUDE = "claude-haiku-4-5-20251001"


@pytest.fixture(scope="module")
def srv():
    with ProviderServer() as server:
        yield server


@pytest.fixture
def nasca(make_nasca):
    return make_nasca(tiers={"t": Tier(daily=1)}, default_tier="t")


def _calls(n, user):
    n.flush()
    return n.get_usage(user).month_calls


def test_openai_gets_a_stable_hash_by_default(srv, nasca):
    chat = nasca.wrap(srv.openai_client().chat.completions.create)
    responses = nasca.wrap(srv.openai_client().responses.create)
    chat(model="gpt-4o-mini", messages=MSG, user="alice@example.com")
    first = srv.last_request.json["user"]
    chat(model="gpt-4o-mini", messages=MSG, user="alice@example.com")
    assert srv.last_request.json["user"] == first == user_hash(nasca.namespace, "alice@example.com")
    assert "alice" not in first and first != user_hash(nasca.namespace, "bob@example.com")
    responses(model="gpt-4o-mini", input="Hello there", safety_identifier="alice@example.com")
    assert srv.last_request.json["safety_identifier"] == first  # read as the user, hashed too
    assert _calls(nasca, "alice@example.com") == 3  # charged to the app's own id


def test_openai_opt_out_and_opt_in_raw(srv, nasca):
    none = nasca.wrap(srv.openai_client().chat.completions.create, send_user="none")
    none(model="gpt-4o-mini", messages=MSG, user="u_42", safety_identifier="u_42")
    assert "user" not in srv.last_request.json and "safety_identifier" not in srv.last_request.json
    raw = nasca.wrap(srv.openai_client().chat.completions.create, send_user="raw")
    raw(model="gpt-4o-mini", messages=MSG, user="u_42")
    assert srv.last_request.json["user"] == "u_42"
    assert _calls(nasca, "u_42") == 2
    with pytest.raises(ConfigurationError):
        nasca.wrap(srv.openai_client().chat.completions.create, send_user="plain")


def test_anthropic_metadata_user_id_is_the_user_and_is_hashed(srv, nasca):
    create = nasca.wrap(srv.anthropic_client().messages.create)
    create(model=CLAUDE, max_tokens=20, messages=MSG, metadata={"user_id": "carol"})
    assert srv.last_request.json["metadata"] == {"user_id": user_hash(nasca.namespace, "carol")}
    assert _calls(nasca, "carol") == 1
    # Nasca's own user= wins over the metadata; the metadata is still not sent raw
    create(model=CLAUDE, max_tokens=20, messages=MSG, metadata={"user_id": "carol"}, user="dave")
    assert _calls(nasca, "dave") == 1 and _calls(nasca, "carol") == 1
    assert srv.last_request.json["metadata"]["user_id"] != "carol"


def test_anthropic_opt_out_and_raw(srv, nasca):
    none = nasca.wrap(srv.anthropic_client().messages.create, send_user="none")
    none(model=CLAUDE, max_tokens=20, messages=MSG, metadata={"user_id": "erin"})
    assert "metadata" not in srv.last_request.json
    raw = nasca.wrap(srv.anthropic_client().messages.create, send_user="raw")
    raw(model=CLAUDE, max_tokens=20, messages=MSG, metadata={"user_id": "erin"})
    assert srv.last_request.json["metadata"] == {"user_id": "erin"}
    assert _calls(nasca, "erin") == 2


def test_the_hash_is_stable_and_keyed_by_the_namespace():
    assert user_hash("app", "u1") == user_hash("app", "u1")
    assert user_hash("app", "u1") != user_hash("other", "u1")
    assert len(user_hash("app", "x" * 256)) <= 64  # within OpenAI's safety_identifier limit


def test_a_non_string_id_is_refused_before_any_request(srv, nasca):
    from nasca_core import InvalidUserError

    before = srv.request_count
    with pytest.raises(InvalidUserError, match="must be a str"):
        nasca.wrap(srv.openai_client().chat.completions.create)(model="gpt-4o-mini", messages=MSG, user=42)
    assert srv.request_count == before


def test_request_user_fields_are_only_the_last_fallback(srv, make_nasca):
    """Anthropic's metadata.user_id and OpenAI's safety_identifier are session ids to some
    apps: they never beat nasca.user(), get_user_id(ctx) or user= (still hashed when sent)."""
    nasca = make_nasca(tiers={"t": Tier(daily=1)}, default_tier="t", get_user_id=lambda ctx: ctx["uid"])
    claude = nasca.wrap(srv.anthropic_client().messages.create)
    responses = nasca.wrap(srv.openai_client().responses.create)
    with nasca.user("alice"):
        claude(model=CLAUDE, max_tokens=20, messages=MSG, metadata={"user_id": "session-123"})
        assert srv.last_request.json["metadata"] == {"user_id": user_hash(nasca.namespace, "session-123")}
        responses(model="gpt-4o-mini", input="Hi", safety_identifier="session-123")
        assert srv.last_request.json["safety_identifier"] == user_hash(nasca.namespace, "session-123")
        # OpenAI's user= is Nasca's user= (one keyword): explicit, it beats the context
        responses(model="gpt-4o-mini", input="Hi", user="bob", safety_identifier="session-123")
    claude(model=CLAUDE, max_tokens=20, messages=MSG, metadata={"user_id": "session-123"},
           ctx={"uid": "carl"})
    responses(model="gpt-4o-mini", input="Hi", safety_identifier="session-123", ctx={"uid": "carl"})
    assert _calls(nasca, "alice") == 2 and _calls(nasca, "carl") == 2 and _calls(nasca, "bob") == 1
    assert _calls(nasca, "session-123") == 0
    # nothing else names a user: the request's field does
    claude(model=CLAUDE, max_tokens=20, messages=MSG, metadata={"user_id": "session-123"})
    assert _calls(nasca, "session-123") == 1


def test_the_hash_is_keyed_by_a_secret_when_one_is_set(srv, nasca, monkeypatch, caplog):
    """Keyed by the public namespace, anyone with a hash can test guessed ids (emails,
    numbers) offline, and two apps on the default namespace send the same hash."""
    monkeypatch.delenv("NASCA_USER_HASH_KEY", raising=False)
    with caplog.at_level("WARNING", logger="nasca"):
        nasca.wrap(srv.openai_client().chat.completions.create)
    assert "NASCA_USER_HASH_KEY" in caplog.text  # unset: said, clearly
    keyed = nasca.wrap(srv.openai_client().chat.completions.create, user_hash_key="app-secret")
    keyed(model="gpt-4o-mini", messages=MSG, user="alice@example.com")
    sent = srv.last_request.json["user"]
    alice = "alice@example.com"
    assert sent == user_hash("app-secret", alice) != user_hash(nasca.namespace, alice)
    monkeypatch.setenv("NASCA_USER_HASH_KEY", "env-secret")
    nasca.wrap(srv.openai_client().chat.completions.create)(model="gpt-4o-mini", messages=MSG, user=alice)
    assert srv.last_request.json["user"] == user_hash("env-secret", alice)
    assert user_hash("k" * 200, "a") != user_hash("k" * 64, "a")  # a long secret is used whole
