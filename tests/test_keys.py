"""Keys: argument rendering, key functions, namespacing, long keys and cluster hash tags.

Everything here is pure code from ``cachelayer._keys``; no store. The rules these tests
pin are described in docs/keys.md.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import string
import zoneinfo
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cachelayer._keys import KeyBuilder, call_key_function, derived_key, escape, render
from cachelayer.errors import ConfigurationError

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
ESCAPED = re.compile(r"[A-Za-z0-9_.~%-]+")
MARKERS = set("!(),=<>[]")
UNRESERVED = set(string.ascii_letters + string.digits + "_.~%-")


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Shade(enum.Enum):
    RED = 1  # same member name as Color.RED, other class


class Level(enum.IntEnum):
    LOW = 1


class UserRef:
    """An object with a stable key of its own."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def __cache_key__(self) -> str:
        return f"user {self.user_id}"


class Opaque:
    pass


def identity(value: Any) -> Any:
    """What render() must tell apart: a type-exact, hashable form of an argument value.

    Types are exact at every level (``1``, ``True``, ``1.0`` and ``"1"`` all differ).
    Floats compare by ``repr`` (``-0.0`` differs from ``0.0``, ``nan`` equals ``nan``),
    Decimals by their digits and exponent (``1.0`` differs from ``1.00``), datetimes and
    times by wall time plus UTC offset (``isoformat``; the tzinfo object itself is not
    part of a key, see docs/keys.md), dicts and sets as unordered collections.
    """
    t = type(value)
    if t is float:
        return (t, repr(value))
    if t is Decimal:
        return (t, str(value))
    if t is dt.datetime or t is dt.time:
        return (t, value.isoformat())
    if t is list or t is tuple:
        return (t, tuple(identity(v) for v in value))
    if t is dict:
        return (t, frozenset((identity(k), identity(v)) for k, v in value.items()))
    if t is set or t is frozenset:
        return (t, frozenset(identity(v) for v in value))
    if isinstance(value, enum.Enum):
        return (t, value.name)
    if isinstance(value, UserRef):
        return (t, value.user_id)
    return (t, value)


# -- strategies -------------------------------------------------------------------------

TRICKY_STRINGS = [
    "",
    "42",
    "-1",
    "0x1",
    "1:*",
    "a b",
    ":*?[]{} %!,()=<>",
    "!s",
    "!N",
    "%342",
    "%",
    "~",
    "é",
    "٣",
    "\ud800",
    "\udfff\ud800",
    "a,b",
    "a=b",
    "{tag}",
]
texts = (
    st.text()
    | st.text(alphabet=":*?[]{} %!,()=<>~-_.0123456789aZ")
    | st.text(st.characters(codec="utf-8") | st.characters(categories=["Cs"]))
    | st.sampled_from(TRICKY_STRINGS)
)
tzinfos = (
    st.none()
    | st.just(PARIS)
    | st.builds(dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23)))
)
hashable_atoms = st.one_of(
    texts,
    st.integers() | st.sampled_from([0, -1, 42, 2**64]),
    st.booleans(),
    st.none(),
    st.floats() | st.sampled_from([0.0, -0.0]),
    st.binary(),
    st.uuids(),
    st.builds(lambda d, tz: d.replace(tzinfo=tz), st.datetimes(), tzinfos),
    st.dates(),
    st.builds(lambda t, tz: t.replace(tzinfo=tz), st.times(), tzinfos),
    st.timedeltas(),
    st.decimals(allow_nan=False) | st.sampled_from([Decimal("1.0"), Decimal("1.00")]),
    st.sampled_from([*Color, *Shade, *Level]),
    st.builds(UserRef, st.integers(0, 3)),
)
hashables = st.recursive(
    hashable_atoms,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=5,
)
arguments = st.recursive(
    hashable_atoms | st.decimals(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=3),
        st.frozensets(hashables, max_size=3),
    ),
    max_leaves=8,
)

# A small pool of look-alikes, combined in small containers, to make near-collisions likely.
CONFUSABLES = [
    *TRICKY_STRINGS,
    "0",
    "a",
    "b",
    "a=b",
    "b=c",
    "!(a)",
    0,
    1,
    42,
    -1,
    True,
    False,
    None,
    0.0,
    -0.0,
    1.0,
    Decimal("0"),
    Decimal("-0"),
    Decimal("0.0"),
    Decimal("1"),
    b"",
    b"0",
    Color.RED,
    Shade.RED,
    Level.LOW,
    dt.date(2024, 1, 1),
    dt.datetime(2024, 1, 1),
    dt.timedelta(0),
    UUID(int=0),
]
confusables = st.recursive(
    st.sampled_from(CONFUSABLES),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(CONFUSABLES), inner, max_size=2),
        st.frozensets(st.sampled_from(CONFUSABLES), max_size=2),
        st.sets(st.sampled_from(CONFUSABLES), max_size=2),
    ),
    max_leaves=5,
)


# -- render -----------------------------------------------------------------------------


@given(values=st.lists(arguments | confusables, min_size=2, max_size=12))
def test_render_is_injective(values: list[Any]) -> None:
    """Two argument values get one rendering exactly when they are the same value."""
    seen: dict[str, Any] = {}
    for value in values:
        rendered = render(value)
        if rendered in seen:
            assert seen[rendered] == identity(value), f"collision on {rendered!r}"
        seen[rendered] = identity(value)
    assert len(seen) == len({identity(v) for v in values})


@given(a=arguments | confusables, b=arguments | confusables)
def test_render_separates_any_two_values(a: Any, b: Any) -> None:
    """render(a) == render(b) exactly when a and b are the same value."""
    assert (render(a) == render(b)) == (identity(a) == identity(b))


@given(value=arguments)
def test_render_is_deterministic(value: Any) -> None:
    """Rendering the same value twice, or an equal copy of it, gives the same text."""
    assert render(value) == render(value)
    if isinstance(value, (dict, set, frozenset)):
        copy = type(value)(reversed(list(value.items() if isinstance(value, dict) else value)))
        assert render(copy) == render(value)


@given(text=texts)
def test_rendered_strings_use_only_unreserved_characters(text: str) -> None:
    """A str renders as "!s" (empty) or [A-Za-z0-9_.~%-]+ never starting with a digit or "-"."""
    rendered = render(text)
    if text == "":
        assert rendered == "!s"
    else:
        assert ESCAPED.fullmatch(rendered)
        assert not rendered[0].isdigit()
        assert rendered[0] != "-"


@given(value=arguments)
def test_renderings_hold_no_glob_or_separator_characters(value: Any) -> None:
    """Any rendering is ASCII from [A-Za-z0-9_.~%-] and render's markers: no braces, no globs."""
    rendered = render(value)
    assert rendered.isascii()
    assert set(rendered) <= UNRESERVED | MARKERS
    assert not set(rendered) & set(":*?{} \t\r\n\\\"'")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ada", "ada"),
        ("", "!s"),
        ("42", "%342"),
        (42, "42"),
        (-7, "-7"),
        ("-7", "%2D7"),
        ("a b", "a%20b"),
        ("1:*", "%31%3A%2A"),
        ("{x}", "%7Bx%7D"),
        ("é", "%C3%A9"),
        ("\ud800", "%ED%A0%80"),
        (None, "!N"),
        (True, "!T"),
        (False, "!F"),
        (-0.0, "!f-0.0"),
        (1e100, "!f1e%2B100"),
        (b"\x00\xff", "!b00ff"),
        (UUID(int=1), "!u00000000000000000000000000000001"),
        (dt.date(2024, 2, 29), "!d2024-02-29"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "!t2024-01-02T03%3A04%3A05"),
        (dt.time(3, 4), "!h03%3A04%3A00"),
        (dt.timedelta(days=-1, seconds=5), "!D-1.5.0"),
        (Decimal("1.50"), "!x1.50"),
        ((1, "a"), "!(1,a)"),
        ([1, "a"], "![1,a]"),
        ({"b": 2, "a": 1}, "!m(a=1,b=2)"),
        ({}, "!m()"),
        ({2, 1}, "!<1,2>"),
        (frozenset({"x"}), "!z<x>"),
        ((), "!()"),
    ],
    ids=repr,
)
def test_render_output_is_the_documented_one(value: Any, expected: str) -> None:
    """Each supported type renders exactly as the table in docs/keys.md says."""
    assert render(value) == expected


def test_string_42_and_int_42_render_differently() -> None:
    """A str of digits never renders like the int it spells."""
    assert render("42") != render(42)
    assert render(["42"]) != render([42])


def test_escape_keeps_only_unreserved_characters() -> None:
    """escape() percent-encodes everything outside [A-Za-z0-9_.~-], in upper-case hex."""
    assert escape("aZ09_.~-") == "aZ09_.~-"
    assert escape("a b:*?") == "a%20b%3A%2A%3F"
    assert escape("%") == "%25"


@pytest.mark.parametrize("value", [Opaque(), object(), 1 + 2j, bytearray(b"x"), [Opaque()]])
def test_value_without_stable_rendering_raises_type_error_naming_the_argument(
    value: Any,
) -> None:
    """An argument with no stable rendering raises TypeError naming the argument."""
    with pytest.raises(TypeError, match="'owner'"):
        render(value, "owner")


def test_cache_key_hook_is_used() -> None:
    """An object with __cache_key__ renders via it, qualified by its class name."""
    expected = "!k" + escape(f"{__name__}.UserRef") + "(user%207)"
    assert render(UserRef(7)) == expected
    assert render(UserRef(7)) == render(UserRef(7))
    assert render(UserRef(7)) != render(UserRef(8))


def test_enum_renders_by_qualified_name() -> None:
    """An Enum member renders as module.Class.MEMBER, never as its value."""
    assert render(Color.RED) == "!E" + escape(f"{__name__}.Color.RED")
    assert render(Color.RED) != render(Shade.RED)
    assert render(Level.LOW) != render(1)


def test_same_instant_in_another_zone_is_another_key() -> None:
    """An aware datetime renders with its UTC offset: one instant in two offsets, two keys."""
    paris = dt.datetime(2024, 7, 1, 14, 0, tzinfo=PARIS)
    utc = paris.astimezone(dt.timezone.utc)
    assert paris == utc
    assert render(paris) != render(utc)
    assert render(paris) != render(paris.replace(tzinfo=None))


# -- call_key_function ------------------------------------------------------------------


def get_user(user_id: int, page: int = 2) -> None:
    """A function to build keys for."""


def search(query: str, *filters: Any, limit: int = 10, **options: Any) -> None:
    """A function with *args, keyword-only and **kwargs parameters."""


def by_position(a: int, /, b: int = 0) -> None:
    """A function with a positional-only parameter."""


def test_positional_and_keyword_spellings_give_one_key() -> None:
    """f(1, 3), f(1, page=3) and f(user_id=1, page=3) share a key."""
    key = call_key_function(get_user, None)
    spellings = [key((1, 3), {}), key((1,), {"page": 3}), key((), {"user_id": 1, "page": 3})]
    assert len(set(spellings)) == 1
    assert key((1, 3), {}) != key((1, 4), {})


def test_defaults_are_applied() -> None:
    """f(1) and f(1, 2) share a key when page defaults to 2."""
    key = call_key_function(get_user, None)
    assert key((1,), {}) == key((1, 2), {})
    assert key((1,), {}) == key((), {"user_id": 1})


def test_auto_key_names_the_function_and_every_argument() -> None:
    """The automatic key is module.qualname: then every parameter as name=rendering."""
    key = call_key_function(get_user, None)
    assert key((42,), {}) == f"{__name__}.get_user:user_id=42,page=2"
    assert key(("42",), {}) == f"{__name__}.get_user:user_id=%342,page=2"


def test_auto_key_of_a_nested_function_escapes_its_qualname() -> None:
    """A qualname with <locals> is escaped, so the key holds no reserved characters."""

    def inner(x: int) -> None:
        """A nested function."""

    key = call_key_function(inner, None)((1,), {})
    assert key.startswith(escape(f"{__name__}.{inner.__qualname__}") + ":")
    assert "%3Clocals%3E" in key
    assert key != call_key_function(get_user, None)((1,), {})


def test_template_renders_only_the_named_parameters() -> None:
    """A "user:{user_id}" template gives "user:42" whatever the other arguments are."""
    key = call_key_function(get_user, "user:{user_id}")
    assert key((42,), {}) == "user:42"
    assert key((42, 9), {}) == "user:42"
    assert key((), {"user_id": 42}) == "user:42"


def test_template_keeps_str_and_int_apart() -> None:
    """In a template, int 42 gives "user:42" and str "42" gives "user:%342"."""
    key = call_key_function(get_user, "user:{user_id}")
    assert key(("42",), {}) == "user:%342"
    assert key(("ada",), {}) == "user:ada"
    assert key(("1:*",), {}) == "user:%31%3A%2A"


def test_template_naming_an_unknown_parameter_is_refused_at_build_time() -> None:
    """A template field the function has no parameter for is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="userid"):
        call_key_function(get_user, "user:{userid}")


@pytest.mark.parametrize(
    "template", ["user:{user.id}", "user:{user_id!r}", "user:{user_id:>5}", "u:{0}", "u:{}"]
)
def test_template_with_attributes_conversions_or_specs_is_refused(template: str) -> None:
    """Only plain {parameter} fields are allowed in a template."""
    with pytest.raises(ConfigurationError, match="plain parameter name"):
        call_key_function(get_user, template)


def test_non_str_non_callable_key_is_refused() -> None:
    """key= must be a template or a callable."""
    with pytest.raises(ConfigurationError, match="key="):
        call_key_function(get_user, 42)  # type: ignore[arg-type]


def test_varargs_kwargs_and_keyword_only_functions_get_stable_keys() -> None:
    """*args, keyword-only and **kwargs parameters all take part in the automatic key."""
    key = call_key_function(search, None)
    base = key(("q",), {})
    assert base == f"{__name__}.search:query=q,filters=!(),limit=10,options=!m()"
    assert key(("q",), {"limit": 10}) == base
    assert key(("q", "a"), {}) != base
    assert key(("q",), {"limit": 11}) != base
    assert key(("q",), {"x": 1}) != base
    assert key(("q",), {"x": 1, "y": 2}) == key(("q",), {"y": 2, "x": 1})
    assert key(("q", 1), {}) != key(("q", "1"), {})


def test_positional_only_parameters_take_the_slow_path() -> None:
    """A positional-only parameter binds like the call, defaults applied."""
    key = call_key_function(by_position, None)
    assert key((1,), {}) == key((1, 0), {}) == key((1,), {"b": 0})
    with pytest.raises(TypeError):
        key((), {"a": 1})


def test_callable_key_gets_the_call_arguments() -> None:
    """A callable key= is called with the call's own arguments and its result is the key."""
    calls: list[tuple[Any, ...]] = []

    def make_key(user_id: int, page: int = 2) -> str:
        calls.append((user_id, page))
        return f"u{user_id}:p{page}"

    key = call_key_function(get_user, make_key)
    assert key((5,), {"page": 3}) == "u5:p3"
    assert key((), {"user_id": 6}) == "u6:p2"
    assert calls == [(5, 3), (6, 2)]


@pytest.mark.parametrize("spec", [None, "user:{user_id}"], ids=["auto", "template"])
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, 3), {}), ((1,), {"user_id": 1}), ((1,), {"nope": 1}), ((), {"page": 1})],
)
def test_wrong_arguments_raise_type_error_like_the_call(
    spec: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Arguments the function would reject raise TypeError when the key is built."""
    with pytest.raises(TypeError):
        get_user(*args, **kwargs)
    with pytest.raises(TypeError):
        call_key_function(get_user, spec)(args, kwargs)


def test_unrenderable_argument_names_the_parameter() -> None:
    """A call with an argument that has no rendering raises TypeError naming the parameter."""
    with pytest.raises(TypeError, match="'page'"):
        call_key_function(get_user, None)((1, Opaque()), {})


# -- KeyBuilder -------------------------------------------------------------------------


def test_full_key_is_namespace_version_key() -> None:
    """Keys are stored as namespace:v<version>:key."""
    keys = KeyBuilder("ns", 1)
    assert keys.prefix == "ns:v1:"
    assert keys.full("user:42") == "ns:v1:user:42"
    assert KeyBuilder("shop.api", "2024-06").full("x") == "shop.api:v2024-06:x"
    assert keys.pattern() == "ns:v1:*"


@pytest.mark.parametrize("namespace", ["", "a:b", "a*", "a b", "a{b}", "é", 7])
def test_bad_namespace_is_a_configuration_error(namespace: Any) -> None:
    """A namespace must be non-empty and made of [A-Za-z0-9_.-]."""
    with pytest.raises(ConfigurationError, match="namespace"):
        KeyBuilder(namespace)


def test_bad_version_or_max_length_is_a_configuration_error() -> None:
    """A version with reserved characters or max_length under 64 is refused."""
    with pytest.raises(ConfigurationError, match="version"):
        KeyBuilder("ns", "1:2")
    with pytest.raises(ConfigurationError, match="max_key_length"):
        KeyBuilder("ns", max_length=63)


@pytest.mark.parametrize("key", [42, b"user", None, ("a",)])
def test_non_str_key_raises_type_error(key: Any) -> None:
    """A cache key must be a str."""
    with pytest.raises(TypeError, match="cache keys are str"):
        KeyBuilder("ns").full(key)


def test_empty_key_raises_value_error() -> None:
    """An empty cache key is refused."""
    with pytest.raises(ValueError, match="empty"):
        KeyBuilder("ns").full("")


def test_long_key_is_shortened_to_exactly_max_length() -> None:
    """A long key keeps a readable head and ends in # and 32 hex digits, max_length long."""
    keys = KeyBuilder("ns", max_length=80)
    long_key = "report:" + "x" * 300
    full = keys.full(long_key)
    assert len(full) == 80
    assert full.startswith("ns:v1:report:xxx")
    assert full[:47] == ("ns:v1:" + long_key)[:47]
    assert re.fullmatch(r"#[0-9a-f]{32}", full[47:])
    assert full == keys.full(long_key)
    assert full == KeyBuilder("ns", max_length=80).full(long_key)
    assert keys.full(long_key + "y") != full
    assert keys.full(long_key[:-1] + "z") != full


def test_key_one_shorter_than_max_length_is_kept_and_max_length_is_hashed() -> None:
    """Keys under max_length are stored as is; a key of exactly max_length is shortened."""
    keys = KeyBuilder("ns", max_length=64)
    short = "k" * (64 - len("ns:v1:") - 1)
    assert keys.full(short) == "ns:v1:" + short
    exact = short + "k"
    assert len(keys.full(exact)) == 64
    assert keys.full(exact) != "ns:v1:" + exact
    assert "#" in keys.full(exact)


def test_a_key_spelling_a_shortened_key_does_not_collide_with_it() -> None:
    """Passing the shortened form of a long key as a key gives a different store key."""
    keys = KeyBuilder("ns", max_length=64)
    shortened = keys.full("x" * 100)
    assert keys.full(shortened[len(keys.prefix) :]) != shortened


def test_close_brace_outside_a_hash_tag_is_refused() -> None:
    """A key holding "}" outside a {hash tag} raises ValueError; a proper tag is kept."""
    keys = KeyBuilder("ns")
    for bad in ["a}b", "}", "x{}y", "{}{tag}", "a}{"]:
        with pytest.raises(ValueError, match="hash tag"):
            keys.full(bad)
    assert keys.full("{user42}:profile") == "ns:v1:{user42}:profile"
    assert keys.full("a}{tag}") == "ns:v1:a}{tag}"
    assert keys.full("open{only") == "ns:v1:open{only"


# -- cluster hash tags ------------------------------------------------------------------


def hashed_part(key: str) -> str:
    """The part of a key Redis Cluster hashes (https://redis.io/docs/reference/cluster-spec/).

    If the key holds a "{", and a "}" follows it, and at least one character sits between
    the first "{" and the first "}" after it, only that content is hashed; else the key.
    """
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end != -1 and end > start + 1:
            return key[start + 1 : end]
    return key


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster takes modulo 16384."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot(key: str) -> int:
    return crc16(hashed_part(key).encode("utf-8", "surrogatepass")) % 16384


def accepted(key: str) -> bool:
    """Whether a store key may hold its braces: no "}" unless it has a hash tag."""
    return "}" not in key or hashed_part(key) != key


def test_slot_helper_matches_redis() -> None:
    """The test's slot function gives the slots Redis documents."""
    assert crc16(b"123456789") == 0x31C3
    assert slot("foo") == 12182
    assert slot("{user1000}.following") == slot("{user1000}.followers")
    assert slot("foo{}{bar}") == crc16(b"foo{}{bar}") % 16384
    assert hashed_part("foo{{bar}}zap") == "{bar"
    assert hashed_part("foo{bar}{zap}") == "bar"


key_texts = (
    st.text(min_size=1, max_size=120)
    | st.text(alphabet="ab#0123456789abcdef", min_size=1)
    | st.text(alphabet="{}ab", min_size=1, max_size=100)
)


@given(pair=st.lists(key_texts, min_size=2, max_size=2, unique=True))
def test_distinct_keys_give_distinct_store_keys(pair: list[str]) -> None:
    """full() never maps two different keys to one store key, shortened or not."""
    assume(all(accepted("ns:v1:" + k) for k in pair))
    keys = KeyBuilder("ns", max_length=64)
    a, b = (keys.full(k) for k in pair)
    assert a != b
    assert len(a) <= 64
    assert a.startswith("ns:v1:")


no_close = st.text(alphabet=st.characters(exclude_characters="}") | st.sampled_from("{ab:"))
tagged_keys = st.builds(
    lambda head, tag, tail: f"{head}{{{tag}}}{tail}",
    st.text(alphabet=st.characters(exclude_characters="{") | st.just("a")),
    no_close.filter(bool),
    st.text(alphabet=st.sampled_from("{}ab:") | st.characters()),
)


@given(key=no_close.filter(bool) | tagged_keys | st.text(alphabet="{}ab", min_size=1))
def test_derived_key_hashes_like_its_key(key: str) -> None:
    """A derived key has the same hashed part as its key, so both live in one cluster slot."""
    if not accepted(key):
        with pytest.raises(ValueError, match="outside a hash tag"):
            derived_key(key, "lease")
        return
    derived = derived_key(key, "lease")
    assert hashed_part(derived) == hashed_part(key)
    assert slot(derived) == slot(key)
    assert derived.startswith("{")
    assert ":lease" in derived
    assert derived != key
    assert derived_key(key, "other") != derived


def test_derived_key_of_keys_with_and_without_braces() -> None:
    """Untagged keys are wrapped in braces; tagged keys keep their own tag."""
    assert derived_key("ns:v1:user:42", "lease") == "{ns:v1:user:42}:lease"
    assert (
        derived_key("ns:v1:{user42}:profile", "lease") == "{user42}:lease:ns:v1:{user42}:profile"
    )
    assert derived_key("ns:v1:a{b", "lease") == "{ns:v1:a{b}:lease"
    assert derived_key("ns:v1:a}{b}", "lease") == "{b}:lease:ns:v1:a}{b}"


def test_caller_keys_and_tags_cannot_spell_internal_keys() -> None:
    """The lease key of the caller key "tags" was the tag key of the tag "lease", and the
    lease key of "a{b}" was the store key of "a{b}:lease": internal keys are reserved now."""
    keys = KeyBuilder("ns")
    assert derived_key(keys.full("tags"), "lease") != keys.tag("lease")
    assert derived_key(keys.full("a{b}"), "lease") != keys.full("a{b}:lease")
    assert derived_key(keys.full("x"), "lock") != derived_key(keys.full("x"), "lease")


@given(a=st.text(min_size=1, max_size=30), b=st.text(min_size=1, max_size=30))
def test_no_caller_key_or_tag_collides_with_a_derived_key(a: str, b: str) -> None:
    """For any caller keys and tags, a store key, a tag key and a lease or lock key are
    never equal (hash tags, braces and separators included)."""
    keys = KeyBuilder("ns")
    try:
        full_a, full_b = keys.full(a), keys.full(b)
    except ValueError:
        return  # a key no store can hold ("}" outside a tag, a lone surrogate): refused
    internal = {derived_key(full_b, "lease"), derived_key(full_b, "lock")}
    try:
        tag_a = keys.tag(a)
    except ValueError:
        return
    assert full_a not in internal
    assert tag_a not in internal
    assert tag_a != full_b


def test_adjacent_template_fields_are_refused() -> None:
    """report('bob1', 2) and report('bob', 12) shared the key of "report:{user}{year}"."""

    def report(user: str, year: int) -> None: ...

    with pytest.raises(ConfigurationError, match="nothing between them"):
        call_key_function(report, "report:{user}{year}")
    assert call_key_function(report, "report:{user}:{year}")(("bob1", 2), {}) != (
        call_key_function(report, "report:{user}:{year}")(("bob", 12), {})
    )


def test_long_tags_are_shortened_like_long_keys() -> None:
    """A 5 MB tag no longer becomes a 5 MB store key: tag keys are cut and hashed at
    max_key_length, distinct tags stay distinct, and all stay in the tags' slot."""
    keys = KeyBuilder("ns")
    huge, other = "t" * 5_000_000, "t" * 4_999_999 + "u"
    assert len(keys.tag(huge)) == keys.max_length
    assert keys.tag(huge) != keys.tag(other)
    assert slot(keys.tag(huge)) == slot(keys.tag("short"))


@pytest.mark.parametrize("key", ["ns:v1:a}b", "ns:v1:x{}y", "ns:v1:}{"])
def test_derived_key_of_a_key_with_a_stray_close_brace_is_refused(key: str) -> None:
    """No derived key can share the slot of a key with "}" but no tag, so it raises."""
    with pytest.raises(ValueError, match="outside a hash tag"):
        derived_key(key, "lease")


def test_auto_key_with_an_empty_dict_argument_has_a_lease_key() -> None:
    """Rendered arguments hold no braces, so an auto key always gets a same-slot lease key."""
    full = KeyBuilder("ns").full(call_key_function(get_user, None)(({},), {}))
    assert slot(derived_key(full, "lease")) == slot(full)


@given(key=key_texts)
def test_every_short_store_key_has_a_same_slot_derived_key(key: str) -> None:
    """Any store key full() returns unshortened gets a derived key in its own slot."""
    keys = KeyBuilder("ns", max_length=250)
    try:
        full = keys.full(key)
    except ValueError:
        assert not accepted("ns:v1:" + key)
        return
    assert slot(derived_key(full, "lease")) == slot(full)


def test_shortened_store_key_has_a_same_slot_derived_key() -> None:
    """A long key with "}" before its hash tag still gets a same-slot derived key."""
    full = KeyBuilder("ns", max_length=64).full("a}" + "x" * 100 + "{tag}")
    assert slot(derived_key(full, "lease")) == slot(full)
