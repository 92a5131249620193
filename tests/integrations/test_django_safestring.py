"""Text marked safe (``SafeString``) through cachelayer, and the ``{% cache %}`` tag.

Django's template fragment cache stores what the template engine renders, a
``SafeString``; it must come back marked safe, or a template that shows it would escape
it a second time. Every test runs on memory and on a real Redis, with JSON and msgpack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.core.cache.utils import make_template_fragment_key
from django.http import HttpRequest, HttpResponse
from django.template import Context, Engine
from django.test import RequestFactory, override_settings
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeData, SafeString, mark_safe
from django.views.decorators.cache import cache_page

from cachelayer import Cache, TypeRegistry
from cachelayer._envelope import Serializer
from cachelayer.django import CacheBackend, register_django_types
from cachelayer.django._types import SAFE_STRING_TYPE_NAME

CacheFactory = Callable[..., Cache]
CODECS = ["json", "msgpack"]
ENGINE = Engine(libraries={"cache": "django.templatetags.cache"})  # autoescape on


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dcache(codec: str, cache_factory: CacheFactory) -> Cache:
    """A plain Cache with the Django types registered, per store and codec."""
    cache = cache_factory(codec=codec)
    register_django_types(cache)
    return cache


@pytest.fixture
def backend(store_kind: str, redis_url: str, namespace: str, codec: str) -> Iterator[CacheBackend]:
    """CACHES["default"] is a cachelayer backend on the parametrized store and codec;
    cleared and closed afterwards."""
    location = "memory://"
    if store_kind == "redis":
        location = redis_url + "?socket_timeout=2&socket_connect_timeout=2"
    setting = {
        "default": {
            "BACKEND": "cachelayer.django.CacheBackend",
            "LOCATION": location,
            "OPTIONS": {"namespace": namespace, "codec": codec},
        }
    }
    with override_settings(CACHES=setting):
        default = caches["default"]
        assert isinstance(default, CacheBackend)
        try:
            yield default
        finally:
            default.clear()
            default.cache.close()


def round_trip(cache: Cache, value: Any) -> Any:
    cache.set("k", value)
    missing = object()
    back = cache.get("k", missing)
    assert back is not missing, "the value did not come back"
    return back


def assert_safe(value: Any, text: str) -> None:
    """``value`` is marked safe, a SafeString, and holds exactly ``text``."""
    assert isinstance(value, SafeData)
    assert type(value) is SafeString
    assert str.__str__(value) == text


# -- the codecs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["<b>bold</b> &amp; more", "", "héllo \u2028 \x00 😀", "{% cache %}"], ids=repr
)
def test_safe_string_round_trips_marked_safe(dcache: Cache, text: str) -> None:
    """A SafeString comes back as a SafeString with the same characters."""
    assert_safe(round_trip(dcache, SafeString(text)), text)


def test_safe_strings_nested_in_containers(dcache: Cache) -> None:
    """SafeStrings inside a dict, a list, a tuple and as dict keys keep their mark; the
    plain str beside them stays a plain str."""
    value = {
        "html": format_html("<p>{}</p>", "<script>"),
        "rows": [mark_safe("<td>1</td>"), "<plain>"],
        "pair": (mark_safe("<i>"), 1),
        mark_safe("<k>"): "v",
    }
    back = round_trip(dcache, value)
    assert back == value
    assert_safe(back["html"], "<p>&lt;script&gt;</p>")
    assert_safe(back["rows"][0], "<td>1</td>")
    assert type(back["rows"][1]) is str
    assert_safe(back["pair"][0], "<i>")
    assert_safe(next(k for k in back if k == "<k>"), "<k>")


def test_a_safe_string_subclass_comes_back_as_a_safe_string(dcache: Cache) -> None:
    """A subclass of SafeString (yours) is read back as a SafeString: still marked safe,
    and no class named by the stored data is built."""

    class Markup(SafeString):
        pass

    assert_safe(round_trip(dcache, Markup("<em>x</em>")), "<em>x</em>")


def test_safe_data_that_is_not_a_str_is_refused(dcache: Cache) -> None:
    """A SafeData that is not a str raises a TypeError that names it; nothing is stored."""

    class SafeNumber(int, SafeData):
        pass

    with pytest.raises(TypeError, match=r"SafeNumber.*not a str"):
        dcache.set("k", SafeNumber(3))
    assert dcache.get("k", "absent") == "absent"


def _forged(cache: Cache, data: Any) -> bytes:
    """Envelope bytes claiming to hold a safe string, built by a writer of our choosing."""
    registry = TypeRegistry()

    class Fake:
        pass

    registry.register(Fake, name=SAFE_STRING_TYPE_NAME, dump=lambda _: data, load=lambda d: d)
    now = cache.engine.now_ms()
    return Serializer(cache.engine.serializer.codec_name, registry=registry).dumps(
        Fake(), written_ms=now, fresh_until_ms=now + 60_000
    )


@pytest.mark.parametrize(
    "data", [123, ["os.system", "ls"], {"class": "SafeString"}, b"bytes"], ids=repr
)
def test_stored_data_that_is_not_text_is_a_miss(dcache: Cache, data: Any) -> None:
    """Stored bytes naming the safe string type with anything but a str are a miss (a
    decode error), never an object of some other type."""
    dcache.store.set(dcache.engine.keys.full("k"), _forged(dcache, data), None)
    assert dcache.get("k", "miss") == "miss"
    assert dcache.stats.decode_errors == 1


def test_backend_set_get_of_a_safe_string(backend: CacheBackend) -> None:
    """Django's cache API (set, get, get_many, get_or_set, add) stores a SafeString and
    returns it marked safe."""
    backend.set("s", mark_safe("<b>1</b>"))
    assert_safe(backend.get("s"), "<b>1</b>")
    assert_safe(backend.get_many(["s"])["s"], "<b>1</b>")
    assert_safe(backend.get_or_set("t", lambda: mark_safe("<t>")), "<t>")
    assert backend.add("u", SafeString("<u>")) is True
    assert_safe(backend.get("u"), "<u>")


# -- the {% cache %} tag -----------------------------------------------------------------------


class Counter:
    """A template variable that counts how often the template reads it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.calls


FRAGMENT = "{% load cache %}<h1>{% cache 60 greeting %}Hi {{ name }} #{{ n }}{% endcache %}</h1>"


def test_cache_tag_serves_the_second_render_from_the_cache(backend: CacheBackend) -> None:
    """{% cache %} through the backend: the first render stores the fragment, the second
    one is served from the cache (the fragment is not rendered again), and the name is
    escaped exactly once both times."""
    template = ENGINE.from_string(FRAGMENT)
    counter = Counter()
    first = template.render(Context({"name": "<Ada & Bob>", "n": counter}))
    second = template.render(Context({"name": "Eve", "n": counter}))
    assert first == second == "<h1>Hi &lt;Ada &amp; Bob&gt; #1</h1>"
    assert counter.calls == 1
    assert isinstance(second, SafeData)
    assert backend.cache.stats.hits >= 1
    assert_safe(backend.get(make_template_fragment_key("greeting")), "Hi &lt;Ada &amp; Bob&gt; #1")


def test_a_cached_fragment_shown_by_another_template_is_not_escaped_again(
    backend: CacheBackend,
) -> None:
    """A fragment read from the cache and shown with {{ }} (autoescape on) is output as
    it is: it was escaped when it was rendered, and stays marked safe."""
    ENGINE.from_string(FRAGMENT).render(Context({"name": "<i>", "n": 7}))
    fragment = backend.get(make_template_fragment_key("greeting"))
    shown = ENGINE.from_string("<div>{{ fragment }}</div>").render(Context({"fragment": fragment}))
    assert shown == "<div>Hi &lt;i&gt; #7</div>"
    assert conditional_escape(fragment) == fragment  # what {{ }} does: SafeData as it is


def test_cache_tag_with_vary_on_and_the_template_fragments_alias(
    store_kind: str, redis_url: str, namespace: str, codec: str
) -> None:
    """Fragments vary on their arguments, and a "template_fragments" alias is used
    before "default", as Django documents."""
    fragments = {
        "BACKEND": "cachelayer.django.CacheBackend",
        "LOCATION": "memory://" if store_kind == "memory" else redis_url,
        "OPTIONS": {"namespace": namespace, "codec": codec},
    }
    template = ENGINE.from_string(
        "{% load cache %}{% cache 60 row id %}<td>{{ text }}</td>{% endcache %}"
    )
    dummy = {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
    with override_settings(CACHES={"default": dummy, "template_fragments": fragments}):
        store = caches["template_fragments"]
        assert isinstance(store, CacheBackend)
        try:
            assert template.render(Context({"id": 1, "text": "a<"})) == "<td>a&lt;</td>"
            assert template.render(Context({"id": 2, "text": "b>"})) == "<td>b&gt;</td>"
            assert template.render(Context({"id": 1, "text": "c"})) == "<td>a&lt;</td>"
            assert_safe(store.get(make_template_fragment_key("row", [2])), "<td>b&gt;</td>")
        finally:
            store.clear()
            store.cache.close()


def test_cache_page_with_a_cached_fragment(backend: CacheBackend) -> None:
    """cache_page still works, around a view whose template holds a {% cache %} fragment:
    the second request is served from the cache, and a page whose fragment comes from
    the cache is rendered right."""
    template = ENGINE.from_string(FRAGMENT + "<p>{{ path }}</p>")
    counter = Counter()
    calls: list[int] = []

    @cache_page(60)
    def view(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        return HttpResponse(
            template.render(Context({"name": "<Ada>", "n": counter, "path": request.path}))
        )

    first = view(RequestFactory().get("/a"))
    second = view(RequestFactory().get("/a"))
    other = view(RequestFactory().get("/b?x=<y>"))
    assert calls == [1, 1]
    assert counter.calls == 1  # /b rendered its page, with the fragment from the cache
    assert first.content == second.content == b"<h1>Hi &lt;Ada&gt; #1</h1><p>/a</p>"
    assert other.content == b"<h1>Hi &lt;Ada&gt; #1</h1><p>/b</p>"
    assert second["Cache-Control"] == "max-age=60"
