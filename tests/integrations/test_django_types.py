"""Model instances and HttpResponse objects through cachelayer's safe codecs.

Every test stores through a real Cache (memory and Redis, JSON and msgpack) and reads
back what a later request would get: same class, same field values and types, same
deferred fields, no query. The models are in ``djapp`` (an in-memory SQLite database).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Model
from django.http import (
    FileResponse,
    HttpResponse,
    HttpResponseNotFound,
    HttpResponseNotModified,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template import engines
from django.template.response import SimpleTemplateResponse
from django.test.utils import CaptureQueriesContext, override_settings

from cachelayer import Cache, TypeRegistry
from cachelayer._envelope import Serializer
from cachelayer.django import register_django_types
from cachelayer.django._types import MODEL_TYPE_NAME
from tests.integrations.djapp.db import database
from tests.integrations.djapp.models import (
    Customer,
    CustomerProxy,
    Order,
    Post,
    Tag,
    VipCustomer,
)

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
CacheFactory = Callable[..., Cache]


@pytest.fixture
def db() -> Iterator[None]:
    with database():
        yield


@pytest.fixture
def templates() -> Iterator[None]:
    """Django's template engine, for template responses."""
    engine = {"BACKEND": "django.template.backends.django.DjangoTemplates"}
    with override_settings(TEMPLATES=[engine]):
        yield


@pytest.fixture(params=["json", "msgpack"])
def dcache(request: pytest.FixtureRequest, cache_factory: CacheFactory) -> Cache:
    """A plain Cache with the Django types registered, per store and codec."""
    cache = cache_factory(codec=request.param)
    register_django_types(cache)
    return cache


def make_customer(**fields: Any) -> Customer:
    values: dict[str, Any] = {
        "name": "Ada",
        "email": None,
        "joined": dt.datetime(2024, 3, 31, 2, 30, tzinfo=dt.timezone.utc),
        "balance": Decimal("1234.50"),
        "prefs": {"theme": "dark", "sizes": [1, 2.5, None], "nested": {"a": True}},
        "avatar": b"\x00\xffpng",
        "birthday": dt.date(1990, 1, 2),
        "wakes_at": dt.time(7, 30, 15, 250),
        "grace": dt.timedelta(days=3, microseconds=7),
        "score": 2.5,
        "document": "docs/ada.pdf",
    }
    values.update(fields)
    return Customer.objects.create(**values)


def assert_same_instance(back: Model, original: Model) -> None:
    """Same class, state and loaded field values, each of the same type."""
    assert type(back) is type(original)
    assert back._state.adding is original._state.adding
    assert back._state.db == original._state.db
    assert back.get_deferred_fields() == original.get_deferred_fields()
    for field in original._meta.concrete_fields:
        name = field.attname
        if name in original.__dict__:
            want, got = original.__dict__[name], back.__dict__[name]
            if hasattr(want, "name") and not isinstance(want, (str, bytes)):  # FieldFile
                want = want.name
            assert got == want, name
            assert type(got) is type(want), name


def round_trip(cache: Cache, value: Any) -> Any:
    cache.set("k", value)
    missing = object()
    back = cache.get("k", missing)
    assert back is not missing, "the value did not come back"
    return back


# -- model instances ----------------------------------------------------------------------------


def test_model_instance_round_trips_exactly_without_a_query(db: None, dcache: Cache) -> None:
    """A model read from the database comes back with every field value and type (JSON,
    Decimal, UUID, datetimes, bytes...), _state.adding False and _state.db, and
    reading it back runs no query."""
    customer = Customer.objects.get(pk=make_customer().pk)
    with CaptureQueriesContext(connection) as queries:
        back = round_trip(dcache, customer)
        assert back.name == "Ada"
        assert back.prefs["sizes"] == [1, 2.5, None]
    assert len(queries) == 0
    assert_same_instance(back, customer)
    assert back._state.adding is False
    assert back._state.db == "default"
    assert back == customer  # Django's equality: same model and pk
    assert str(back.balance) == "1234.50"
    assert repr(back.score) == repr(customer.score)


def test_aware_datetimes_keep_their_zone(db: None, dcache: Cache) -> None:
    """A datetime field holding a ZoneInfo datetime (set in code) keeps zone and fold."""
    customer = make_customer()
    customer.joined = dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS)
    back = round_trip(dcache, customer)
    assert back.joined.tzinfo == PARIS
    assert back.joined.fold == 1
    assert back.joined == customer.joined


def test_nullable_fields_and_null_foreign_key(db: None, dcache: Cache) -> None:
    """None values and a null foreign key id come back as None; the null relation is
    known without a query."""
    order = Order.objects.create(customer=None, total=Decimal("0.00"), placed=_now())
    order = Order.objects.get(pk=order.pk)
    back = round_trip(dcache, order)
    assert back.customer_id is None
    with CaptureQueriesContext(connection) as queries:
        assert back.customer is None
    assert len(queries) == 0


def test_deferred_fields_stay_deferred(db: None, dcache: Cache) -> None:
    """only()/defer(): the deferred fields are not stored and stay deferred after the
    round trip (no query to rebuild); reading one later loads it, as Django does."""
    pk = make_customer().pk
    partial = Customer.objects.only("name", "balance").get(pk=pk)
    with CaptureQueriesContext(connection) as queries:
        back = round_trip(dcache, partial)
        assert back.name == "Ada"
        assert back.balance == Decimal("1234.50")
    assert len(queries) == 0
    assert back.get_deferred_fields() == partial.get_deferred_fields()
    assert "prefs" in back.get_deferred_fields()
    with CaptureQueriesContext(connection) as queries:
        assert back.prefs == {"theme": "dark", "sizes": [1, 2.5, None], "nested": {"a": True}}
    assert len(queries) == 1


def test_foreign_key_id_and_select_related_object(db: None, dcache: Cache) -> None:
    """A foreign key's id is a field; an object select_related loaded comes back with it,
    so reading the relation runs no query."""
    customer = make_customer()
    order = Order.objects.create(customer=customer, total=Decimal("9.99"), placed=_now())
    plain = round_trip(dcache, Order.objects.get(pk=order.pk))
    assert plain.customer_id == customer.pk
    joined = round_trip(dcache, Order.objects.select_related("customer").get(pk=order.pk))
    with CaptureQueriesContext(connection) as queries:
        assert joined.customer.name == "Ada"
        assert joined.customer.balance == Decimal("1234.50")
    assert len(queries) == 0
    assert_same_instance(joined.customer, Customer.objects.get(pk=customer.pk))


def test_related_objects_linked_in_a_loop_are_stored_without_them(db: None, dcache: Cache) -> None:
    """An instance whose cached relations lead back to itself (linked by hand) is stored
    without its related objects instead of recursing forever."""
    customer = make_customer()
    order = Order.objects.create(customer=customer, total=Decimal(1), placed=_now())
    order._state.fields_cache["customer"] = order
    back = round_trip(dcache, order)
    assert back.customer_id == customer.pk
    assert "customer" not in back._state.fields_cache


def test_subclasses_and_proxies_keep_their_class(db: None, dcache: Cache) -> None:
    """Multi-table children and proxies are rebuilt as their own class: no model has to
    be registered by hand."""
    vip = VipCustomer.objects.create(name="Vip", joined=_now(), balance=Decimal("5.00"), level=3)
    back = round_trip(dcache, VipCustomer.objects.get(pk=vip.pk))
    assert type(back) is VipCustomer
    assert back.level == 3
    assert back.customer_ptr_id == vip.pk
    proxy = round_trip(dcache, CustomerProxy.objects.get(pk=vip.pk))
    assert type(proxy) is CustomerProxy
    assert proxy.name == "Vip"


def test_uuid_primary_key_and_lists_of_instances(db: None, dcache: Cache) -> None:
    """A UUID primary key round-trips, and instances nest in lists and dicts."""
    posts = [Post.objects.create(title=f"p{i}") for i in range(3)]
    back = round_trip(dcache, {"posts": list(Post.objects.order_by("title")), "n": 3})
    assert [p.pk for p in back["posts"]] == [p.pk for p in sorted(posts, key=lambda p: p.title)]
    assert all(type(p.pk) is type(posts[0].pk) for p in back["posts"])


def test_unsaved_instance_keeps_adding(dcache: Cache) -> None:
    """An instance never saved comes back with _state.adding True and no database."""
    tag = Tag(name="new")
    back = round_trip(dcache, tag)
    assert back._state.adding is True
    assert back._state.db is None
    assert back.pk is None
    assert back.name == "new"


def test_values_the_database_would_give_back(db: None, dcache: Cache) -> None:
    """A Choices member is stored as its value, a FieldFile as its name, a memoryview
    (PostgreSQL's BinaryField) as bytes that come back as a memoryview."""
    customer = make_customer()
    customer.status = Customer.Status.BANNED
    customer.avatar = memoryview(b"\x01\x02")  # type: ignore[assignment]
    assert customer.document.name == "docs/ada.pdf"  # the descriptor now holds a FieldFile
    back = round_trip(dcache, customer)
    assert back.status == "banned"
    assert type(back.status) is str
    assert type(back.__dict__["avatar"]) is memoryview
    assert bytes(back.avatar) == b"\x01\x02"
    assert back.document.name == "docs/ada.pdf"


def test_a_value_the_codec_cannot_store_is_refused(db: None, dcache: Cache) -> None:
    """A field holding something no codec stores (an F() expression before refresh)
    raises TypeError naming it."""
    from django.db.models import F

    customer = make_customer()
    customer.balance = F("balance") + 1  # type: ignore[assignment]
    with pytest.raises(TypeError, match="CombinedExpression"):
        dcache.set("k", customer)


def _forged(cache: Cache, data: Any) -> bytes:
    """Envelope bytes claiming to be a Django model, built by a writer of our choosing."""
    registry = TypeRegistry()

    class Fake:
        pass

    registry.register(Fake, name=MODEL_TYPE_NAME, dump=lambda _: data, load=lambda d: d)
    return Serializer(cache.engine.serializer.codec_name, registry=registry).dumps(
        Fake(), written_ms=cache.engine.now_ms(), fresh_until_ms=cache.engine.now_ms() + 60_000
    )


@pytest.mark.parametrize(
    "data",
    [
        {"model": "auth.User", "db": "default", "fields": {"id": 1}},
        {"model": "os.system", "db": "default", "fields": {}},
        {"model": "djapp", "db": "default", "fields": {}},
        {"model": "djapp.Customer", "db": "default", "fields": {"id": 1, "__class__": 2}},
        {"model": "djapp.Order", "db": None, "fields": {"id": 1}, "related": {"total": 5}},
        {"model": "djapp.Order", "db": None, "fields": {"id": 1}, "related": {"customer": 5}},
    ],
    ids=[
        "not-installed",
        "not-a-model",
        "no-model-name",
        "unknown-field",
        "not-a-relation",
        "wrong-related-type",
    ],
)
def test_stored_bytes_cannot_rebuild_anything_else(dcache: Cache, data: Any) -> None:
    """A stored label is looked up in Django's app registry only, and stored fields and
    relations must be the model's: anything else is a miss (a decode error)."""
    dcache.store.set(dcache.engine.keys.full("k"), _forged(dcache, data), None)
    assert dcache.get("k", "miss") == "miss"
    assert dcache.stats.decode_errors == 1


def test_the_backend_cache_stores_models_by_default(db: None) -> None:
    """The Cache behind CacheBackend has the Django types: Django's API caches a model."""
    from django.core.cache import caches

    customer = make_customer()
    with override_settings(
        CACHES={"default": {"BACKEND": "cachelayer.django.CacheBackend", "LOCATION": "memory://"}}
    ):
        backend = caches["default"]
        try:
            backend.set("customer", customer)
            back = backend.get("customer")
            assert type(back) is Customer
            assert back.pk == customer.pk
        finally:
            backend.clear()
            backend.cache.close()


# -- querysets ---------------------------------------------------------------------------------


def _loaded(obj: Model) -> dict[str, Any]:
    """The loaded field values of an instance, by attname: what a read back must equal."""
    return {
        f.attname: obj.__dict__[f.attname]
        for f in obj._meta.concrete_fields
        if f.attname in obj.__dict__
    }


def test_queryset_is_stored_as_its_rows(db: None, dcache: Cache) -> None:
    """A QuerySet is stored as its rows and reads back as a list of equal instances."""
    for name in ("Ada", "Bob", "Cy"):
        make_customer(name=name)
    queryset = Customer.objects.order_by("name")
    back = round_trip(dcache, queryset)
    assert type(back) is list
    assert back == list(queryset)
    for got, want in zip(back, queryset, strict=True):
        assert_same_instance(got, want)


def test_deferred_queryset_writes_without_a_query(db: None, dcache: Cache) -> None:
    """An evaluated defer() queryset is written and read with no query, still deferred."""
    for name in ("Ada", "Bob"):
        make_customer(name=name)
    queryset = Customer.objects.defer("prefs", "avatar").order_by("name")
    rows = list(queryset)  # evaluated, as by a view that rendered it before caching it
    with CaptureQueriesContext(connection) as queries:
        dcache.set("k", queryset)
    assert len(queries) == 0
    with CaptureQueriesContext(connection) as queries:
        back = dcache.get("k")
    assert len(queries) == 0
    assert type(back) is list
    assert [_loaded(o) for o in back] == [_loaded(o) for o in rows]
    for got, want in zip(back, rows, strict=True):
        assert_same_instance(got, want)
        assert got.get_deferred_fields() == {"prefs", "avatar"}


def test_unevaluated_queryset_runs_only_its_own_query(db: None, dcache: Cache) -> None:
    """An unevaluated queryset costs its own one query to store, none per deferred row."""
    for name in ("Ada", "Bob", "Cy"):
        make_customer(name=name)
    queryset = Customer.objects.only("name").order_by("name")
    with CaptureQueriesContext(connection) as queries:
        dcache.set("k", queryset)
    assert len(queries) == 1
    back = dcache.get("k")
    assert [o.name for o in back] == ["Ada", "Bob", "Cy"]
    assert all(o.get_deferred_fields() for o in back)


def test_values_querysets_are_stored_as_their_rows(db: None, dcache: Cache) -> None:
    """values()/values_list() querysets read back as lists of dicts, tuples or values."""
    for name in ("Ada", "Bob"):
        make_customer(name=name)
    ordered = Customer.objects.order_by("name")
    assert round_trip(dcache, ordered.values("name", "balance")) == [
        {"name": "Ada", "balance": Decimal("1234.50")},
        {"name": "Bob", "balance": Decimal("1234.50")},
    ]
    assert round_trip(dcache, ordered.values_list("name", "score")) == [
        ("Ada", 2.5),
        ("Bob", 2.5),
    ]
    assert round_trip(dcache, ordered.values_list("name", flat=True)) == ["Ada", "Bob"]
    assert round_trip(dcache, Customer.objects.none()) == []


def test_the_backend_cache_stores_querysets(db: None) -> None:
    """cache.set(key, deferred_queryset) through CacheBackend works, as in Django's tests."""
    from django.core.cache import caches

    make_customer()
    queryset = Customer.objects.defer("prefs")
    with override_settings(
        CACHES={"default": {"BACKEND": "cachelayer.django.CacheBackend", "LOCATION": "memory://"}}
    ):
        backend = caches["default"]
        try:
            backend.set("deferred_queryset", queryset)
            back = backend.get("deferred_queryset")
            assert back == list(queryset)
            assert back[0].get_deferred_fields() == {"prefs"}
        finally:
            backend.clear()
            backend.cache.close()


def _now() -> dt.datetime:
    return dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


# -- responses ----------------------------------------------------------------------------------


def test_http_response_round_trips(dcache: Cache) -> None:
    """Status, reason, charset, headers (names as written), cookies and body come back."""
    response = HttpResponse(
        "héllo".encode("latin-1"),
        status=201,
        reason="Made It",
        charset="latin-1",
        headers={"X-Trace": "abc", "Cache-Control": "max-age=60"},
    )
    response.set_cookie("sid", "a b;c", max_age=3600, httponly=True, samesite="Lax")
    response.set_cookie("plain", "1", expires="Wed, 21 Oct 2026 07:28:00 GMT", secure=True)
    response.xframe_options_exempt = True  # type: ignore[attr-defined]
    back = round_trip(dcache, response)
    assert type(back) is HttpResponse
    assert back.status_code == 201
    assert back.reason_phrase == "Made It"
    assert back.charset == "latin-1"
    assert back.content == "héllo".encode("latin-1")
    assert list(back.headers.items()) == list(response.headers.items())
    assert back.cookies.output() == response.cookies.output()
    assert back.cookies["sid"]["max-age"] == 3600
    assert back.xframe_options_exempt is True
    assert back.serialize() == response.serialize()


def test_default_reason_and_charset_stay_derived(dcache: Cache) -> None:
    """A response without an explicit reason or charset still derives them (from its
    status and Content-Type) after the round trip."""
    back = round_trip(
        dcache, HttpResponse(b"x", status=404, content_type="text/plain; charset=utf-16")
    )
    assert back.reason_phrase == "Not Found"
    assert back.charset == "utf-16"
    assert back._reason_phrase is None


def test_django_response_classes_are_kept(dcache: Cache) -> None:
    """django.http's own subclasses come back as themselves: JsonResponse, 404, a redirect
    (with .url), 304 (no Content-Type)."""
    cases: list[HttpResponse] = [
        JsonResponse({"id": 1, "tags": ["a"]}),
        HttpResponseNotFound(b"gone"),
        HttpResponseRedirect("/next?x=1"),
        HttpResponseNotModified(),
    ]
    for response in cases:
        back = round_trip(dcache, response)
        assert type(back) is type(response)
        assert back.status_code == response.status_code
        assert back.content == response.content
        assert list(back.headers.items()) == list(response.headers.items())
    assert round_trip(dcache, cases[2]).url == "/next?x=1"
    assert "Content-Type" not in round_trip(dcache, cases[3]).headers


def test_other_subclasses_become_their_nearest_django_class(
    dcache: Cache, templates: None
) -> None:
    """A subclass of yours is rebuilt as the django.http class it derives from, and a
    rendered TemplateResponse as HttpResponse (as the cache middleware needs it)."""

    class ApiResponse(JsonResponse):
        pass

    back = round_trip(dcache, ApiResponse({"ok": True}, status=202))
    assert type(back) is JsonResponse
    assert back.status_code == 202
    template = engines["django"].from_string("Hi {{ name }}")
    rendered = SimpleTemplateResponse(template, {"name": "Ada"})
    rendered.render()
    back = round_trip(dcache, rendered)
    assert type(back) is HttpResponse
    assert back.content == b"Hi Ada"


def test_streaming_and_unrendered_responses_are_refused(
    dcache: Cache, templates: None, tmp_path: Any
) -> None:
    """Streaming responses (their body can be read once) and an unrendered template
    response raise a TypeError that says why; nothing is stored."""
    path = tmp_path / "f.txt"
    path.write_bytes(b"data")
    with path.open("rb") as handle:
        file_response = FileResponse(handle)
        with pytest.raises(TypeError, match=r"FileResponse.*read only once"):
            dcache.set("k", file_response)
        file_response.close()
    with pytest.raises(TypeError, match="StreamingHttpResponse"):
        dcache.set("k", StreamingHttpResponse(iter([b"a"])))
    template = engines["django"].from_string("x")
    with pytest.raises(TypeError, match="render"):
        dcache.set("k", SimpleTemplateResponse(template))
    assert dcache.get("k", "absent") == "absent"
