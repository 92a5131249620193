"""``invalidate_on``: writes to a model invalidate tags and keys after they commit.

A rule connects ``post_save``, ``pre_delete``/``post_delete`` and ``m2m_changed`` for one
model (and its subclasses and proxies). At signal time it formats its templates with the
instance, and hands the tags and keys to ``transaction.on_commit`` of the database the
signal names: the invalidation runs after the commit, never before it, and a rolled back
transaction invalidates nothing. Invalidating before the commit would let a reader load
and cache the old row again (docs/consistency.md).

Old values: a rule also remembers, in ``post_init``, the fields its templates name as
the instance was loaded. A save that moves an order from user 1 to user 2 invalidates
``user:1`` as well as ``user:2``. The remembered values advance to the saved ones when
the save commits (an ``on_commit`` callback), and only for the fields it wrote
(``update_fields``): after a rolled back save they are still the database's.

Deletes: the targets are computed in ``pre_delete``, while the row still exists (the
deferred fields the templates name are read in one query), and scheduled in
``post_delete``. A delete never fails because of a rule: what cannot be computed is
logged and skipped.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction
from django.db.models import ManyToManyField, Model
from django.db.models.signals import (
    class_prepared,
    m2m_changed,
    post_delete,
    post_init,
    post_save,
    pre_delete,
)

from .._cache import Cache
from ._templates import Target, check_targets, render, render_old, template_roots

__all__ = ["ModelInvalidation", "connect_pending", "invalidate_on", "registered_rules"]

M = TypeVar("M", bound=type[Model])

_SNAPSHOTS = "_cachelayer_loaded"  # instance.__dict__ key: {rule id: {root: value}}
_DELETING = "_cachelayer_deleting"  # instance.__dict__ key: {rule id: (tags, keys)}

log = logging.getLogger("cachelayer.cache")

_rules_lock = threading.Lock()
_rules: list[ModelInvalidation] = []
_numbers = itertools.count(1)


def registered_rules() -> list[ModelInvalidation]:
    """The rules connected now (the system checks read them)."""
    with _rules_lock:
        return list(_rules)


class ModelInvalidation:
    """One ``invalidate_on`` rule, connected to Django's signals until :meth:`disconnect`.

    Attributes:
        model: the model (its subclasses and proxies are covered too).
        tags: the tag templates and callables.
        keys: the key templates and callables.
        cache: the Cache, or the alias whose Cache is looked up at each write.
    """

    def __init__(
        self,
        model: type[Model],
        tags: Iterable[Target],
        keys: Iterable[Target],
        cache: Cache | str,
    ) -> None:
        self.model = model
        self.tags = check_targets(tags, "tags")
        self.keys = check_targets(keys, "keys")
        self.cache = cache
        templates = [t for t in (*self.tags, *self.keys) if isinstance(t, str)]
        #: the attribute names the templates start with (checked by cachelayer.E002)
        self.roots = sorted({root for t in templates for root in template_roots(t)})
        self._uid = f"cachelayer.invalidate_on.{next(_numbers)}"
        self._tracked: dict[str, str] | None = None  # root -> attname, built on first use
        self._throughs: dict[type[Model], ManyToManyField[Any, Any]] | None = None
        self._clearing: dict[tuple[int, type[Model]], list[Any]] = {}
        self._clearing_lock = threading.Lock()
        # Every signal is connected for the senders concerned only: the model, its
        # subclasses and proxies (which send their own class), and its m2m tables. A
        # listener of any sender would run for every instance of every model of the app
        # (post_init), and turn off Django's fast deletes and fast m2m adds everywhere.
        self._senders: list[type[Model]] = []
        #: the m2m through models this rule listens to
        self.m2m_senders: list[type[Model]] = []
        class_prepared.connect(self._class_prepared, weak=False, dispatch_uid=self._uid)
        for cls in _with_subclasses(model):
            self._listen(cls)
        with _rules_lock:
            _rules.append(self)
            if not apps.models_ready:  # through models are known once every model is
                _pending.append(self)
                m2m_changed.connect(_connect_pending_then_send, dispatch_uid=_PENDING_UID)
        if apps.models_ready:
            self.listen_for_m2m()

    def __repr__(self) -> str:
        return f"<invalidate_on {self.model._meta.label} tags={self.tags!r} keys={self.keys!r}>"

    def disconnect(self) -> None:
        """Stop invalidating: disconnect every signal of this rule."""
        class_prepared.disconnect(dispatch_uid=self._uid)
        for cls in self._senders:
            for signal in (post_init, post_save, pre_delete, post_delete):
                signal.disconnect(sender=cls, dispatch_uid=self._uid)
        for through in self.m2m_senders:
            m2m_changed.disconnect(sender=through, dispatch_uid=self._uid)
        self._senders, self.m2m_senders = [], []
        with _rules_lock:
            if self in _rules:
                _rules.remove(self)
            if self in _pending:
                _pending.remove(self)

    def _listen(self, cls: type[Model]) -> None:
        if cls in self._senders:
            return
        uid = self._uid
        if self.roots:
            post_init.connect(self._initialised, sender=cls, weak=False, dispatch_uid=uid)
        post_save.connect(self._saved, sender=cls, weak=False, dispatch_uid=uid)
        pre_delete.connect(self._deleting, sender=cls, weak=False, dispatch_uid=uid)
        post_delete.connect(self._deleted, sender=cls, weak=False, dispatch_uid=uid)
        self._senders.append(cls)

    def _class_prepared(self, sender: type[Model], **kwargs: Any) -> None:
        """A subclass or proxy of the model defined after the rule: listen to it too."""
        if issubclass(sender, self.model):
            self._listen(sender)

    def listen_for_m2m(self) -> None:
        """Connect to the m2m tables of the model's fields (once their models exist)."""
        for through in self._m2m_fields():
            if through not in self.m2m_senders:
                m2m_changed.connect(
                    self.on_m2m_changed, sender=through, weak=False, dispatch_uid=self._uid
                )
                self.m2m_senders.append(through)

    # -- what a write invalidates ------------------------------------------------------------

    def targets(self, instance: Model) -> tuple[list[str], list[str]]:
        """The tags and keys of ``instance`` as it is now."""
        return render(self.tags, instance), render(self.keys, instance)

    def _old_targets(self, instance: Model) -> tuple[list[str], list[str]]:
        """The template tags and keys of the values the instance was loaded with (or
        last saved with, in a committed transaction)."""
        old = instance.__dict__.get(_SNAPSHOTS, {}).get(self._uid)
        if not old:
            return [], []
        return render_old(self.tags, old), render_old(self.keys, old)

    def _cache(self) -> Cache:
        if isinstance(self.cache, str):
            from ._shared import get_cache

            return get_cache(self.cache)
        return self.cache

    def _schedule(self, using: str, tags: list[str], keys: list[str]) -> None:
        """Invalidate after the transaction on ``using`` commits (at once outside one)."""
        tags, keys = list(dict.fromkeys(tags)), list(dict.fromkeys(keys))
        if not tags and not keys:
            return
        on_commit = functools.partial(transaction.on_commit, using=using, robust=True)
        self._cache().invalidate_after_commit(on_commit, tags=tags, keys=keys)

    # -- old values: what the instance held when it was loaded -------------------------------

    def _tracked_fields(self) -> dict[str, str]:
        """Template roots that name a concrete field (or ``pk``), with their attname: the
        values that can be remembered without a query."""
        if self._tracked is None:
            meta = self.model._meta
            by_name = {}
            for field in meta.concrete_fields:
                by_name[field.attname] = field.attname
                if not field.is_relation:
                    by_name[field.name] = field.attname
            if meta.pk is not None:
                by_name["pk"] = meta.pk.attname
            self._tracked = {root: by_name[root] for root in self.roots if root in by_name}
        return self._tracked

    def _values(self, instance: Model, written: Iterable[str] | None = None) -> dict[str, Any]:
        """The tracked values the instance holds, of the fields in ``written`` (names or
        attnames, as ``update_fields``; every field if None) and its pk. A deferred field
        is not read: that would be a query. A pk of None names no row."""
        loaded = instance.__dict__
        meta = self.model._meta
        pk_attname = meta.pk.attname if meta.pk is not None else None
        wanted: set[str] | None = None
        if written is not None:
            names = set(written)
            wanted = {f.attname for f in meta.concrete_fields if {f.name, f.attname} & names}
        values = {}
        for root, attname in self._tracked_fields().items():
            if attname not in loaded:
                continue
            if attname == pk_attname:
                if loaded[attname] is None:
                    continue
            elif wanted is not None and attname not in wanted:
                continue
            values[root] = loaded[attname]
        return values

    def _remember(self, instance: Model, values: dict[str, Any]) -> None:
        """Merge ``values`` into the instance's old values."""
        instance.__dict__.setdefault(_SNAPSHOTS, {}).setdefault(self._uid, {}).update(values)

    # The handlers below are connected for the rule's own senders only (``_listen``).

    def _initialised(self, sender: type[Model], instance: Model, **kwargs: Any) -> None:
        instance.__dict__.setdefault(_SNAPSHOTS, {})[self._uid] = self._values(instance)

    def _load_deferred(self, instance: Model, using: str) -> None:
        """Read the tracked fields the instance deferred, in one query (the row must still
        exist; if it does not, they stay deferred)."""
        loaded = instance.__dict__
        missing = sorted({a for a in self._tracked_fields().values() if a not in loaded})
        if not missing or instance.pk is None:
            return
        try:
            instance.refresh_from_db(using=using, fields=missing)
        except ObjectDoesNotExist:
            log.warning(
                "cachelayer: invalidate_on(%s): the row pk=%r is gone; %s could not be read",
                self.model._meta.label,
                instance.pk,
                ", ".join(missing),
            )

    # -- signal receivers ----------------------------------------------------------------------

    def _saved(
        self,
        sender: type[Model],
        instance: Model,
        created: bool,
        using: str,
        update_fields: frozenset[str] | None = None,
        **kwargs: Any,
    ) -> None:
        tags, keys = self.targets(instance)
        if not created:
            old_tags, old_keys = self._old_targets(instance)
            tags += old_tags
            keys += old_keys
        self._schedule(using, tags, keys)
        if self.roots:
            # The written values become the old ones once they are the database's: when
            # the transaction commits. A rollback leaves the remembered values as they were.
            written = self._values(instance, update_fields)
            transaction.on_commit(
                functools.partial(self._remember, instance, written), using=using, robust=True
            )

    def _deleting(self, sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
        """Compute the targets while the row exists; ``_deleted`` schedules them."""
        tags: list[str] = []
        keys: list[str] = []
        try:
            self._load_deferred(instance, using)
            deferred = instance.get_deferred_fields()
            tags = self._render_for_delete(self.tags, instance, deferred)
            keys = self._render_for_delete(self.keys, instance, deferred)
            old_tags, old_keys = self._old_targets(instance)
            tags += old_tags
            keys += old_keys
        except Exception:  # a delete never fails because of a rule
            log.exception(
                "cachelayer: invalidate_on(%s): the targets of the delete of pk=%r are incomplete",
                self.model._meta.label,
                instance.pk,
            )
        instance.__dict__.setdefault(_DELETING, {})[self._uid] = (tags, keys)

    def _render_for_delete(
        self, targets: tuple[Target, ...], instance: Model, deferred: set[str]
    ) -> list[str]:
        """Each target that formats; the others are logged. A template naming a field
        that is still deferred (the row was gone) is skipped without a query."""
        tracked = self._tracked_fields()
        out: list[str] = []
        for target in targets:
            if isinstance(target, str) and any(
                tracked.get(root) in deferred for root in template_roots(target)
            ):
                continue
            try:
                out += render((target,), instance)
            except Exception:
                log.exception(
                    "cachelayer: invalidate_on(%s): %r failed for the delete of pk=%r",
                    self.model._meta.label,
                    target,
                    instance.pk,
                )
        return out

    def _deleted(self, sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
        tags, keys = instance.__dict__.get(_DELETING, {}).pop(self._uid, ([], []))
        try:
            self._schedule(using, tags, keys)
        except Exception:  # a delete never fails because of a rule (an unknown alias)
            log.exception(
                "cachelayer: invalidate_on(%s): the delete of pk=%r could not schedule %s %s",
                self.model._meta.label,
                instance.pk,
                tags,
                keys,
            )

    def _m2m_fields(self) -> dict[type[Model], ManyToManyField[Any, Any]]:
        """through model -> its ManyToManyField, for the model's m2m relations, declared
        on it or pointing at it (built on the first m2m signal: the app registry is ready
        by then)."""
        if self._throughs is None:
            meta = self.model._meta
            fields: list[Any] = list(meta.many_to_many)
            fields += [rel.field for rel in meta.related_objects if rel.many_to_many]
            self._throughs = {f.remote_field.through: f for f in fields}
        return self._throughs

    def on_m2m_changed(
        self,
        sender: type[Model],
        instance: Model,
        action: str,
        reverse: bool,
        model: type[Model],
        pk_set: set[Any] | None,
        using: str,
        **kwargs: Any,
    ) -> None:
        if action not in ("pre_clear", "post_clear", "post_add", "post_remove"):
            return
        field = self._m2m_fields().get(sender)
        if field is None:  # the rule was disconnected while the signal was being sent
            return
        other_side_is_ours = issubclass(model, self.model)
        if action == "pre_clear":
            if other_side_is_ours:  # post_clear has no pk_set: note who is linked now
                linked = _linked_pks(field, instance, reverse, using)
                with self._clearing_lock:
                    self._clearing[(id(instance), sender)] = linked
            return
        if action == "post_clear":
            with self._clearing_lock:
                pk_set = set(self._clearing.pop((id(instance), sender), ()))
        affected: list[Model] = []
        if isinstance(instance, self.model):
            affected.append(instance)
        if other_side_is_ours and pk_set:
            affected += model._base_manager.using(using).filter(pk__in=pk_set)
        tags: list[str] = []
        keys: list[str] = []
        for obj in affected:
            obj_tags, obj_keys = self.targets(obj)
            tags += obj_tags
            keys += obj_keys
        self._schedule(using, tags, keys)


def _with_subclasses(model: type[Model]) -> list[type[Model]]:
    found, todo = [], [model]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo += cls.__subclasses__()
    return found


_PENDING_UID = "cachelayer.invalidate_on.pending"
_pending: list[ModelInvalidation] = []


def connect_pending() -> None:
    """Connect the m2m receivers of rules registered before every model was loaded (in a
    models module, or with the class decorator). The app's ``ready()`` calls this; without
    the app, the first m2m change of the process does."""
    with _rules_lock:
        pending = list(_pending)
        _pending.clear()
        m2m_changed.disconnect(dispatch_uid=_PENDING_UID)
    for rule in pending:
        rule.listen_for_m2m()


def _connect_pending_then_send(sender: type[Model], **kwargs: Any) -> None:
    """The stand-in receiver while rules wait for their through models: it connects them,
    and hands them this change (a signal being sent does not see receivers connected
    during the send)."""
    with _rules_lock:
        pending = list(_pending)
    connect_pending()
    for rule in pending:
        if sender in rule.m2m_senders:
            rule.on_m2m_changed(sender=sender, **kwargs)


def _linked_pks(
    field: ManyToManyField[Any, Any], instance: Model, reverse: bool, using: str
) -> list[Any]:
    """The pks on the other side of ``instance`` through ``field``'s table."""
    source, target = field.m2m_field_name(), field.m2m_reverse_field_name()
    if reverse:
        source, target = target, source
    through: Any = field.remote_field.through
    rows = through._base_manager.using(using).filter(**{source: instance.pk})
    return list(rows.values_list(target, flat=True))


@overload
def invalidate_on(
    model: type[Model],
    *,
    tags: Iterable[Target] = (),
    keys: Iterable[Target] = (),
    cache: Cache | str | None = None,
) -> ModelInvalidation: ...


@overload
def invalidate_on(
    model: None = None,
    *,
    tags: Iterable[Target] = (),
    keys: Iterable[Target] = (),
    cache: Cache | str | None = None,
) -> Callable[[M], M]: ...


def invalidate_on(
    model: type[Model] | None = None,
    *,
    tags: Iterable[Target] = (),
    keys: Iterable[Target] = (),
    cache: Cache | str | None = None,
) -> ModelInvalidation | Callable[[M], M]:
    """Invalidate ``tags`` and ``keys`` after every committed write to ``model``.

    A save, a delete, or a change to one of the model's many-to-many relations (from
    either side) formats the templates with the instance (``"user:{user_id}"``,
    ``"user:{pk}"``) or calls the callables (``instance -> iterable of str``), and
    invalidates the tags (``cache.invalidate_tags``) and deletes the keys
    (``cache.delete_many``; cachelayer keys, as the ``cached`` decorator's) once the
    transaction commits (``transaction.on_commit`` on the signal's database). A rolled
    back transaction invalidates nothing. A save that changed a field a template names
    also invalidates the value the instance was loaded with (or last saved with, once
    that save committed). A delete computes its targets before the row is deleted and
    never fails because of the rule: what cannot be computed is logged and skipped.

    Queryset ``update()``, ``bulk_create``, ``bulk_update`` and raw SQL send no signals:
    after those, call ``cache.invalidate_after_commit(transaction.on_commit, tags=[...])``.

    Args:
        model: the model; its subclasses and proxies are covered too. Leave it out to
            use ``invalidate_on(tags=...)`` as a class decorator on the model.
        tags: tag templates or callables.
        keys: key templates or callables.
        cache: a Cache, or a ``CACHES`` alias (default ``"default"``) whose Cache is
            looked up at each write.

    Returns:
        The rule; ``disconnect()`` stops it. As a decorator: the class, unchanged.

    Raises:
        TypeError: ``tags`` or ``keys`` is one string, or holds something that is neither
            a template nor a callable.
        ValueError: a template does not parse.
    """
    target_cache: Cache | str = "default" if cache is None else cache
    tag_targets, key_targets = check_targets(tags, "tags"), check_targets(keys, "keys")
    _warn_if_late(model)
    if model is None:

        def decorate(cls: M) -> M:
            ModelInvalidation(cls, tag_targets, key_targets, target_cache)
            return cls

        return decorate
    return ModelInvalidation(model, tag_targets, key_targets, target_cache)


def _warn_if_late(model: type[Model] | None) -> None:
    """A rule declared once Django has started (in views.py, say) only exists in the
    processes that happened to import its module: ``manage.py shell``, management
    commands and task workers never import views, and their writes invalidate nothing.
    ``AppConfig.ready()`` (or a models module) runs in every process."""
    if not apps.ready:
        return
    log.warning(
        "cachelayer: invalidate_on(%s) was declared after Django started (in a module "
        "imported late, such as views.py): processes that never import that module "
        "(manage.py shell, commands, workers) will not invalidate. Declare rules in "
        "AppConfig.ready() or next to the model.",
        model.__name__ if model is not None else "...",
    )
