"""Django's model instances, querysets, ``HttpResponse`` objects and safe strings for
cachelayer's safe codecs.

Each is one family registration (``TypeRegistry.register(..., subclasses=True)``): every
model class, and every ``HttpResponseBase`` subclass, is covered under one stored name,
and the stored data says which class to rebuild. Loading rebuilds only what it knows:
a model of Django's app registry (by its label, never an import path), or one of
``django.http``'s own response classes. Every ``QuerySet`` is stored as its rows and read
back as a list of them, with no class to rebuild. Text marked safe (``SafeData``, what
``mark_safe`` and the template engine return) is stored as its characters and read back
as a ``SafeString``. docs/django.md describes the payloads.
"""

from __future__ import annotations

from http.cookies import Morsel
from typing import Any

from django.apps import apps
from django.db.models import Choices, Model, QuerySet
from django.db.models.fields.files import FieldFile
from django.http import (
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseGone,
    HttpResponseNotAllowed,
    HttpResponseNotFound,
    HttpResponseNotModified,
    HttpResponsePermanentRedirect,
    HttpResponseRedirect,
    HttpResponseServerError,
    JsonResponse,
)
from django.http.response import HttpResponseBase, ResponseHeaders
from django.utils.safestring import SafeData, SafeString

from .._cache import Cache

__all__ = [
    "MODEL_TYPE_NAME",
    "QUERYSET_TYPE_NAME",
    "RESPONSE_TYPE_NAME",
    "SAFE_STRING_TYPE_NAME",
    "register_django_types",
]

MODEL_TYPE_NAME = "django.Model"
QUERYSET_TYPE_NAME = "django.QuerySet"
RESPONSE_TYPE_NAME = "django.HttpResponse"
SAFE_STRING_TYPE_NAME = "django.SafeString"

# Field values of these types are stored as they are; anything else is looked at once.
_PLAIN = frozenset({str, int, float, bool, type(None), bytes, dict, list})
# select_related chains deeper than this are stored without their related objects.
_MAX_RELATED_DEPTH = 16


def register_django_types(cache: Cache) -> None:
    """Let ``cache`` store model instances, querysets (as their rows), ``HttpResponse``
    objects and safe strings (``SafeString``: ``{% cache %}`` fragments, ``mark_safe``)
    with its safe codecs (JSON, msgpack).

    The backend's Cache has them already; call this for a plain ``cachelayer.Cache``
    that your Django code uses. Every process that reads the entries must call it too.
    """
    registry = cache.engine.serializer.registry
    registry.register(
        Model, name=MODEL_TYPE_NAME, dump=dump_model, load=load_model, subclasses=True
    )
    registry.register(
        QuerySet,
        name=QUERYSET_TYPE_NAME,
        dump=dump_queryset,
        load=load_queryset,
        subclasses=True,
    )
    registry.register(
        HttpResponseBase,
        name=RESPONSE_TYPE_NAME,
        dump=dump_response,
        load=load_response,
        subclasses=True,
    )
    registry.register(
        SafeData,
        name=SAFE_STRING_TYPE_NAME,
        dump=dump_safe_string,
        load=load_safe_string,
        subclasses=True,
    )


# -- model instances -------------------------------------------------------------------------


def dump_model(obj: Model) -> dict[str, Any]:
    """A model instance as ``{"model": label, "db": alias, "fields": {attname: value}}``,
    plus ``"adding"``, ``"memoryview"`` and ``"related"`` when they apply.

    Only loaded fields are stored, so deferred fields stay deferred. A ``memoryview``
    (PostgreSQL's ``BinaryField``) is stored as bytes and noted; a ``FieldFile`` as its
    name, a ``Choices`` member as its value: what a load from the database holds.
    """
    loaded = obj.__dict__
    fields: dict[str, Any] = {}
    views: list[str] = []
    for field in obj._meta.concrete_fields:
        name = field.attname
        if name not in loaded:
            continue  # deferred
        value = loaded[name]
        if type(value) not in _PLAIN:
            if type(value) is memoryview:
                value = bytes(value)
                views.append(name)
            elif isinstance(value, FieldFile):
                value = value.name
            elif isinstance(value, Choices):
                value = value.value
        fields[name] = value
    data: dict[str, Any] = {"model": obj._meta.label, "db": obj._state.db, "fields": fields}
    if obj._state.adding:
        data["adding"] = True
    if views:
        data["memoryview"] = views
    related = _related(obj)
    if related and _acyclic(obj, set(), 0):
        data["related"] = related
    return data


def _related(obj: Model) -> dict[str, Model | None]:
    """The objects ``select_related`` (or an earlier access) cached on forward relations."""
    cached = obj._state.fields_cache
    if not cached:
        return {}
    return {
        f.name: cached[f.name]
        for f in obj._meta.concrete_fields
        if f.is_relation and f.name in cached
    }


def _acyclic(obj: Model, path: set[int], depth: int) -> bool:
    """True if no chain of cached forward relations from ``obj`` leads back into itself
    (instances linked by hand can form a loop, which would recurse forever)."""
    if id(obj) in path or depth > _MAX_RELATED_DEPTH:
        return False
    path.add(id(obj))
    for other in _related(obj).values():
        if other is not None and not _acyclic(other, path, depth + 1):
            return False
    path.discard(id(obj))
    return True


def load_model(data: dict[str, Any]) -> Model:
    """Rebuild a model instance with its class's ``from_db``, as a query would: no query.

    Raises:
        LookupError: the label is not a model of Django's app registry.
        ValueError: a stored field or relation is not one of the model's.
    """
    model = apps.get_model(data["model"])
    meta = model._meta
    stored: dict[str, Any] = data["fields"]
    names = [f.attname for f in meta.concrete_fields if f.attname in stored]
    if len(names) != len(stored):
        unknown = sorted(set(stored) - set(names))
        raise ValueError(f"{meta.label} has no concrete fields {unknown}")
    for name in data.get("memoryview", ()):
        stored[name] = memoryview(stored[name])
    obj: Model = model.from_db(data["db"], names, [stored[n] for n in names])
    if data.get("adding"):
        obj._state.adding = True
    for name, other in data.get("related", {}).items():
        field = meta.get_field(name)
        if not (field.concrete and field.is_relation and field.name == name):
            raise ValueError(f"{meta.label}.{name} is not a forward relation")
        related_model: Any = field.related_model
        if other is not None and not isinstance(other, related_model):
            raise ValueError(f"{meta.label}.{name} cannot hold a {type(other).__name__}")
        obj._state.fields_cache[name] = other
    return obj


# -- querysets ---------------------------------------------------------------------------------


def dump_queryset(queryset: QuerySet[Any, Any]) -> list[Any]:
    """A queryset as the list of its rows: model instances (each stored as above, so
    deferred fields stay deferred and are not loaded), or the dicts, tuples or values of
    ``values()`` and ``values_list()``.

    A queryset already evaluated runs no query; one not evaluated yet is evaluated here,
    with its own query (and its ``prefetch_related`` ones), as pickling it would be.
    """
    return list(queryset)


def load_queryset(rows: Any) -> list[Any]:
    """The stored rows as a list, not a queryset: a queryset rebuilt from them could only
    run its query again, which is what the cache is there to avoid.

    Raises:
        ValueError: the stored data is not a list.
    """
    if type(rows) is not list:
        raise ValueError(f"stored queryset rows are a {type(rows).__name__}, not a list")
    return rows


# -- responses ---------------------------------------------------------------------------------

# django.http's own classes, rebuilt as themselves; other subclasses (TemplateResponse,
# yours) as the nearest of these in their MRO, in the end HttpResponse.
_RESPONSES: dict[str, type[HttpResponse]] = {
    cls.__name__: cls
    for cls in (
        HttpResponse,
        HttpResponseRedirect,
        HttpResponsePermanentRedirect,
        HttpResponseNotModified,
        HttpResponseBadRequest,
        HttpResponseNotFound,
        HttpResponseForbidden,
        HttpResponseNotAllowed,
        HttpResponseGone,
        HttpResponseServerError,
        JsonResponse,
    )
}
_RESPONSE_CLASSES = frozenset(_RESPONSES.values())


def dump_response(response: HttpResponseBase) -> dict[str, Any]:
    """An ``HttpResponse`` as its class, status, reason, charset, headers, cookies and
    body bytes.

    Raises:
        TypeError: a streaming response (``StreamingHttpResponse``, ``FileResponse``),
            or a template response that is not rendered yet.
    """
    cls = type(response)
    if not isinstance(response, HttpResponse):
        raise TypeError(
            f"cachelayer cannot store a {cls.__module__}.{cls.__qualname__}: its body is "
            "an iterator that can be read only once (streaming, files). Cache the data "
            "the response is built from instead"
        )
    if getattr(response, "is_rendered", True) is False:
        raise TypeError(
            f"cachelayer cannot store a {cls.__qualname__} before it is rendered: call "
            "render() first"
        )
    kind = next(c for c in cls.__mro__ if c in _RESPONSE_CLASSES)
    data: dict[str, Any] = {
        "class": kind.__name__,
        "status": response.status_code,
        "headers": [[name, value] for name, value in response.headers.items()],
        "content": response.content,
    }
    # The reason and charset as set, not as derived (from the status, the Content-Type).
    reason = getattr(response, "_reason_phrase", None)
    charset = getattr(response, "_charset", None)
    if reason is not None:
        data["reason"] = reason
    if charset is not None:
        data["charset"] = charset
    if response.cookies:
        data["cookies"] = [
            [m.key, m.value, m.coded_value, {k: v for k, v in m.items() if v != ""}]
            for m in response.cookies.values()
        ]
    if getattr(response, "xframe_options_exempt", False):
        data["xframe_options_exempt"] = True
    return data


def load_response(data: dict[str, Any]) -> HttpResponse:
    """Rebuild a response: ``django.http``'s class of that name, with ``HttpResponse``'s
    constructor (the subclass's own one wants its original arguments)."""
    cls = _RESPONSES[data["class"]]
    response = cls.__new__(cls)
    HttpResponse.__init__(
        response,
        data["content"],
        status=data["status"],
        reason=data.get("reason"),
        charset=data.get("charset"),
    )
    response.headers = ResponseHeaders(dict(data["headers"]))
    for key, value, coded_value, attributes in data.get("cookies", ()):
        morsel: Morsel[str] = Morsel()
        morsel.set(key, value, coded_value)
        morsel.update(attributes)
        response.cookies[key] = morsel
    if data.get("xframe_options_exempt"):
        response.xframe_options_exempt = True
    return response


# -- safe strings ------------------------------------------------------------------------------


def dump_safe_string(text: SafeData) -> str:
    """Text marked safe as the plain ``str`` of its characters.

    The whole ``SafeData`` family is covered: ``SafeString`` (the only one in Django 4.2
    and 5.x) and any subclass of it, which is read back as a ``SafeString``.

    Raises:
        TypeError: a ``SafeData`` that is not a ``str``.
    """
    if not isinstance(text, str):
        cls = type(text)
        raise TypeError(
            f"cachelayer cannot store a {cls.__module__}.{cls.__qualname__}: it is marked "
            "safe (SafeData) but is not a str. Store its text with mark_safe() instead"
        )
    # str() would return the SafeString itself (SafeString.__str__ returns self).
    return str.__str__(text)


def load_safe_string(data: Any) -> SafeString:
    """The stored text as a ``SafeString``, so templates do not escape it again.

    Raises:
        ValueError: the stored data is not a str.
    """
    if type(data) is not str:
        raise ValueError(f"stored safe string is a {type(data).__name__}, not a str")
    return SafeString(data)
