"""``invalidate_on`` for SQLAlchemy: committed writes to a mapped class invalidate tags and keys.

A rule formats its templates (``"user:{id}"``, ``"org:{org_id}"``) with the values of each
row a session writes, collects the results while the session flushes, and invalidates
them once the transaction commits: never before (a reader would load and cache the old
row again, docs/consistency.md), and never after a rollback.

Where the targets come from:

- Unit-of-work writes (``session.add``, attribute changes, ``session.delete``, cascades
  and orphans): the mapper events of the rule's class and its subclasses.
  ``before_update`` and ``before_delete`` run while the row still holds its old values:
  old values come from the attribute history, and those the instance never loaded are
  read in one ``SELECT`` on the flush's connection. ``after_update`` and
  ``after_insert`` see the new ones. A row moved from org 1 to org 2 invalidates both.
- ORM-enabled ``update()``/``delete()``/``insert()`` run by ``Session.execute``: the
  ``do_orm_execute`` event reads the rows the statement will touch (a ``SELECT ... FOR
  UPDATE`` of the same WHERE, or the primary keys of a bulk update by primary key), runs
  the statement, and for an UPDATE reads the same rows again. What it cannot resolve
  row by row invalidates the rule's ``tags_on_bulk`` instead.

Where they wait: ``session.info`` maps the innermost transaction (a savepoint, or the
root) to its targets. A released savepoint hands its targets to the enclosing
transaction; a rolled back one drops them; the root's commit (``after_commit``)
invalidates everything; a rollback or ``close()`` discards it.

How they are applied: with the sync Cache methods, except in an ``AsyncSession``, where
``after_commit`` runs inside SQLAlchemy's greenlet on the event loop: there the async
methods are awaited through SQLAlchemy's greenlet bridge, so the loop keeps running and
``await session.commit()`` returns once the invalidation is done. A commit never fails
because of the cache: a failing store is counted (``invalidation_errors``) and logged,
and a write never fails because of a rule: what a rule cannot render is logged and its
``tags_on_bulk`` are invalidated instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import string
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy.util as sa_util
from sqlalchemy import and_, event, inspect, select, tuple_
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.orm import InstanceState, Mapper, ORMExecuteState, Session, SessionTransaction
from sqlalchemy.sql import ClauseElement

from ._cache import Cache
from .errors import ConfigurationError

__all__ = ["ModelInvalidation", "invalidate_on"]

log = logging.getLogger("cachelayer.sqlalchemy")

_PENDING = "cachelayer.sqlalchemy.pending"  # session.info: {transaction: _Targets}
_UPDATING = "cachelayer.sqlalchemy.updating"  # session.info: {(rule, state): _Update}, in a flush
_ROOT = re.compile(r"[.\[]")
_numbers = itertools.count(1)

# SQLAlchemy's bridge from sync code run by greenlet_spawn back to the event loop (the one
# AdaptedConnection.run_async uses); named await_ from 2.1 on, await_only before.
_await: Callable[[Coroutine[Any, Any, None]], None] = getattr(sa_util, "await_", None) or (
    sa_util.await_only
)


def invalidate_on(
    cache: Cache,
    model: type[Any],
    *,
    tags: Iterable[str] = (),
    keys: Iterable[str] = (),
    tags_on_bulk: Iterable[str] = (),
    max_bulk_rows: int = 1000,
) -> ModelInvalidation:
    """Invalidate ``tags`` and ``keys`` of every row of ``model`` a committed session wrote.

    Each template is formatted with the row's mapped column attributes (``"user:{id}"``,
    ``"org:{org_id}"``, ``"day:{created.date}"``). Inserts, updates and deletes through
    the unit of work and ORM-enabled ``update()``/``delete()``/``insert()`` statements run
    by ``Session.execute`` are covered, for ``Session`` and ``AsyncSession``; an update
    invalidates the values the row had before as well as after. Nothing happens until the
    session's transaction commits, and nothing after a rollback.

    Args:
        cache: the Cache to invalidate.
        model: a mapped class; its subclasses are covered too.
        tags: tag templates (``cache.invalidate_tags``).
        keys: key templates (``cache.delete_many``): cachelayer keys, as
            ``cache.cached(key=...)`` makes them.
        tags_on_bulk: plain tags invalidated instead when a statement's rows cannot be
            told apart (see docs/sqlalchemy.md): they should cover what ``tags`` and
            ``keys`` cover.
        max_bulk_rows: a statement that touches more rows than this invalidates
            ``tags_on_bulk`` instead of each row's targets.

    Returns:
        The rule; ``disconnect()`` stops it.

    Raises:
        ConfigurationError: ``model`` is not mapped, a template does not parse, or names
            something that is not a column attribute of ``model``; a ``tags_on_bulk`` tag
            has a field; ``max_bulk_rows`` is below 0.
        TypeError: ``tags``, ``keys`` or ``tags_on_bulk`` is one string, or holds
            something that is not a string.
    """
    return ModelInvalidation(
        cache,
        model,
        tags=tags,
        keys=keys,
        tags_on_bulk=tags_on_bulk,
        max_bulk_rows=max_bulk_rows,
    )


class ModelInvalidation:
    """One ``invalidate_on`` rule, listening to SQLAlchemy until :meth:`disconnect`.

    Attributes:
        cache: the Cache it invalidates.
        model: the mapped class (its subclasses are covered too).
        tags: the tag templates.
        keys: the key templates.
        tags_on_bulk: the tags invalidated when rows cannot be resolved.
        max_bulk_rows: the most rows a statement is resolved row by row for.
        roots: the column attributes the templates name.
    """

    def __init__(
        self,
        cache: Cache,
        model: type[Any],
        *,
        tags: Iterable[str] = (),
        keys: Iterable[str] = (),
        tags_on_bulk: Iterable[str] = (),
        max_bulk_rows: int = 1000,
    ) -> None:
        mapper = inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper):
            raise ConfigurationError(
                f"invalidate_on({getattr(model, '__name__', repr(model))}): not a mapped class"
            )
        if max_bulk_rows < 0:
            raise ConfigurationError(f"invalidate_on: max_bulk_rows={max_bulk_rows} is < 0")
        self.cache = cache
        self.model = model
        self.mapper: Mapper[Any] = mapper
        self.max_bulk_rows = max_bulk_rows
        columns = set(mapper.columns.keys())
        self.tags = _check_templates(tags, "tags", model, columns)
        self.keys = _check_templates(keys, "keys", model, columns)
        self.tags_on_bulk = _check_templates(tags_on_bulk, "tags_on_bulk", model, set())
        self.roots: tuple[str, ...] = tuple(
            sorted({root for t in (*self.tags, *self.keys) for root in _template_roots(t)})
        )
        #: roots whose value the database may change on UPDATE (onupdate defaults)
        self._server_updated = frozenset(
            root
            for root in self.roots
            if getattr(mapper.columns[root], "onupdate", None) is not None
            or getattr(mapper.columns[root], "server_onupdate", None) is not None
        )
        self._number = next(_numbers)
        self._listeners: list[tuple[str, Callable[..., None]]] = [
            ("before_update", self._before_update),
            ("after_update", self._after_update),
            ("after_insert", self._after_insert),
            ("before_delete", self._before_delete),
        ]
        for name, listener in self._listeners:
            event.listen(model, name, listener, propagate=True)
        _registry.add(self)

    def __repr__(self) -> str:
        return (
            f"<invalidate_on {self.model.__name__} tags={list(self.tags)!r} "
            f"keys={list(self.keys)!r} tags_on_bulk={list(self.tags_on_bulk)!r}>"
        )

    def disconnect(self) -> None:
        """Stop invalidating (targets already collected in open transactions still are)."""
        for name, listener in self._listeners:
            if event.contains(self.model, name, listener):
                event.remove(self.model, name, listener)
        _registry.remove(self)

    # -- the unit of work (mapper events, during the flush) -------------------------------------

    def _before_update(self, mapper: Mapper[Any], connection: Connection, target: Any) -> None:
        state: InstanceState[Any] = inspect(target)
        session = state.session
        if session is None or not session.is_modified(target, include_collections=False):
            return  # no UPDATE is emitted for this instance
        old: dict[str, Any] = {}
        new: dict[str, Any] = {}
        need_old: list[str] = []
        later: list[str] = []  # new values only the database knows, read after the UPDATE
        for root in self.roots:
            history = state.attrs[root].history  # never loads
            if history.added:  # written by this flush
                value = history.added[0]
                if isinstance(value, ClauseElement):
                    later.append(root)
                else:
                    new[root] = value
                if history.deleted:
                    old[root] = history.deleted[0]
                else:
                    need_old.append(root)  # set without loading the old value
            elif history.unchanged:
                old[root] = new[root] = history.unchanged[0]
            elif history.deleted:  # ``del obj.attr``: written as NULL
                old[root] = history.deleted[0]
                later.append(root)
            else:  # not loaded, and not written: the database's value stays
                need_old.append(root)
            if root in self._server_updated and root not in later:
                new.pop(root, None)
                later.append(root)
        identity = state.identity
        old.update(self._read(connection, mapper, identity, need_old))
        for root in need_old:
            if root not in new and root not in later and root in old:
                new[root] = old[root]
        updating = session.info.setdefault(_UPDATING, {})
        updating[(self._number, state)] = (old, new, later)

    def _after_update(self, mapper: Mapper[Any], connection: Connection, target: Any) -> None:
        state: InstanceState[Any] = inspect(target)
        session = state.session
        if session is None:
            return
        found = session.info.get(_UPDATING, {}).pop((self._number, state), None)
        if found is None:
            return  # no net change: before_update left nothing
        old, new, later = found
        if later:
            pk = [
                new.get(key, value)
                for key, value in zip(_pk_keys(mapper), state.identity or (), strict=False)
            ]
            new.update(self._read(connection, mapper, pk, later))
        _collect(self, session, [old, new] if old != new else [new])

    def _after_insert(self, mapper: Mapper[Any], connection: Connection, target: Any) -> None:
        state: InstanceState[Any] = inspect(target)
        session = state.session
        if session is None:
            return
        values: dict[str, Any] = {}
        missing: list[str] = []
        for root in self.roots:
            value = state.dict.get(root, _MISSING)
            if value is _MISSING or isinstance(value, ClauseElement):
                missing.append(root)  # a server default, or a SQL expression
            else:
                values[root] = value
        if missing:
            pk = [state.dict.get(key) for key in _pk_keys(mapper)]
            values.update(self._read(connection, mapper, pk, missing))
        _collect(self, session, [values])

    def _before_delete(self, mapper: Mapper[Any], connection: Connection, target: Any) -> None:
        state: InstanceState[Any] = inspect(target)
        session = state.session
        if session is None:
            return
        values: dict[str, Any] = {}
        missing: list[str] = []
        for root in self.roots:
            history = state.attrs[root].history
            if history.deleted:  # the committed value, under an unflushed change
                values[root] = history.deleted[0]
            elif history.unchanged:
                values[root] = history.unchanged[0]
            else:
                missing.append(root)
        values.update(self._read(connection, mapper, state.identity, missing))
        _collect(self, session, [values])

    def _read(
        self,
        connection: Connection,
        mapper: Mapper[Any],
        pk: Sequence[Any] | None,
        roots: Sequence[str],
    ) -> dict[str, Any]:
        """The database's values of ``roots`` for the row with primary key ``pk``, in one
        query on the flush's connection (the primary key itself needs none). A row that
        cannot be read leaves its roots out (the templates naming them are then logged)."""
        pk_keys = _pk_keys(mapper)
        out: dict[str, Any] = {}
        if pk is not None and len(pk) == len(pk_keys):
            out = {key: value for key, value in zip(pk_keys, pk, strict=True) if key in roots}
        rest = [root for root in roots if root not in out]
        if not rest:
            return out
        if pk is None or len(pk) != len(pk_keys) or any(value is None for value in pk):
            log.warning(
                "cachelayer: invalidate_on(%s): a row without a primary key; %s not read",
                self.model.__name__,
                ", ".join(rest),
            )
            return out
        query = (
            select(*(mapper.columns[root] for root in rest))
            .select_from(mapper.persist_selectable)
            .where(
                and_(
                    *(
                        column == value
                        for column, value in zip(mapper.primary_key, pk, strict=True)
                    )
                )
            )
        )
        row = connection.execute(query).first()
        if row is None:
            log.warning(  # (no primary key values: they may be user data)
                "cachelayer: invalidate_on(%s): a row is gone; %s not read",
                self.model.__name__,
                ", ".join(rest),
            )
            return out
        out.update(zip(rest, row, strict=True))
        return out


_MISSING = object()


def _pk_keys(mapper: Mapper[Any]) -> list[str]:
    """The attribute names of the mapper's primary key columns, in their order."""
    return [mapper.get_property_by_column(column).key for column in mapper.primary_key]


def _render(rule: ModelInvalidation, values: Mapping[str, Any]) -> tuple[list[str], bool]:
    """The tags and keys (``"t"``/``"k"``-prefixed) of a row with ``values``, and whether
    every template rendered. A template that does not is logged and left out."""
    complete = True
    out: list[str] = []
    for prefix, templates in (("t", rule.tags), ("k", rule.keys)):
        for template in templates:
            try:
                out.append(prefix + template.format_map(values))
            except Exception:
                complete = False
                # The row's values stay out of the log (user data): the columns only.
                log.exception(
                    "cachelayer: invalidate_on(%s): %r does not format with the row's "
                    "columns %s; invalidating tags_on_bulk %s instead",
                    rule.model.__name__,
                    template,
                    sorted(values),
                    list(rule.tags_on_bulk),
                )
    return out, complete


def _collect(rule: ModelInvalidation, session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """Render ``rows`` into the pending targets of ``session``'s current transaction."""
    tags: list[str] = []
    keys: list[str] = []
    complete = True
    for values in rows:
        rendered, ok = _render(rule, values)
        complete = complete and ok
        for target in rendered:
            (tags if target[0] == "t" else keys).append(target[1:])
    if not complete:
        tags += rule.tags_on_bulk
    _pending(session).add(rule.cache, tags, keys)


_warned: set[tuple[int, str]] = set()  # (id of the rule, reason) logged already


def _collect_unresolved(rule: ModelInvalidation, session: Session, reason: str) -> None:
    """Rows were written that cannot be told apart: invalidate ``tags_on_bulk``."""
    if (id(rule), reason) not in _warned:
        _warned.add((id(rule), reason))  # once per rule and reason: these repeat per request
        log.warning(
            "cachelayer: invalidate_on(%s): %s; invalidating tags_on_bulk %s instead of "
            "each row's tags and keys (logged once)",
            rule.model.__name__,
            reason,
            list(rule.tags_on_bulk),
        )
    _pending(session).add(rule.cache, rule.tags_on_bulk, ())


# -- templates --------------------------------------------------------------------------------


def _template_roots(template: str) -> list[str]:
    """The attribute names a template's fields start with (``"{created.date}"``: created).

    Raises:
        ConfigurationError: the template does not parse, or has a positional field.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(f"template {template!r} does not parse: {exc}") from None
    roots = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = _ROOT.split(field, maxsplit=1)[0]
        if not root.isidentifier():
            raise ConfigurationError(
                f"template {template!r}: {{{field}}} must start with an attribute name"
            )
        roots.append(root)
    return roots


def _check_templates(
    templates: Iterable[str], what: str, model: type[Any], columns: set[str]
) -> tuple[str, ...]:
    if isinstance(templates, str):
        raise TypeError(f"invalidate_on({what}=...) takes a list of templates, not one string")
    checked = tuple(templates)
    for template in checked:
        if not isinstance(template, str):
            raise TypeError(f"invalidate_on({what}=...): {template!r} is not a str template")
        for root in _template_roots(template):
            if root in columns:
                continue
            if not columns:
                raise ConfigurationError(
                    f"invalidate_on({model.__name__}, {what}=...): {template!r} has the "
                    f"field {{{root}}}; {what} are plain tags, with no fields"
                )
            raise ConfigurationError(
                f"invalidate_on({model.__name__}, {what}=...): {template!r} names "
                f"{root!r}, which is not a column attribute of {model.__name__} (it has "
                f"{', '.join(sorted(columns))}); name a column, such as the foreign key "
                f"rather than the relationship"
            )
    return checked


# -- pending targets, per transaction -----------------------------------------------------------


class _Targets:
    """Tags and keys to invalidate, per Cache, each once, in the order they were found."""

    __slots__ = ("by_cache",)

    def __init__(self) -> None:
        self.by_cache: dict[int, tuple[Cache, dict[str, None], dict[str, None]]] = {}

    def add(self, cache: Cache, tags: Iterable[str], keys: Iterable[str]) -> None:
        entry = self.by_cache.get(id(cache))
        if entry is None:
            entry = self.by_cache[id(cache)] = (cache, {}, {})
        entry[1].update(dict.fromkeys(tags))
        entry[2].update(dict.fromkeys(keys))

    def merge(self, other: _Targets) -> None:
        for cache, tags, keys in other.by_cache.values():
            self.add(cache, tags, keys)


def _pending(session: Session) -> _Targets:
    """The targets of the session's innermost savepoint, or of its root transaction."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    assert transaction is not None, "a write outside a transaction"
    frames: dict[SessionTransaction, _Targets] = session.info.setdefault(_PENDING, {})
    targets = frames.get(transaction)
    if targets is None:
        targets = frames[transaction] = _Targets()
    return targets


def _enclosing(transaction: SessionTransaction) -> SessionTransaction:
    """The savepoint or root transaction a savepoint's targets go to when it is released."""
    parent = transaction.parent
    assert parent is not None
    while parent.parent is not None and not parent.nested:
        parent = parent.parent
    return parent


def _after_commit(session: Session) -> None:
    """A savepoint was released (hand its targets up), or the root committed (apply all)."""
    frames: dict[SessionTransaction, _Targets] | None = session.info.get(_PENDING)
    if not frames:
        return
    nested = session.get_nested_transaction()
    if nested is not None:
        released = frames.pop(nested, None)
        if released is not None:
            enclosing = _enclosing(nested)
            frames.setdefault(enclosing, _Targets()).merge(released)
        return
    del session.info[_PENDING]
    everything = _Targets()
    for targets in frames.values():
        everything.merge(targets)
    _apply(everything)


def _after_rollback(session: Session) -> None:
    """The database rolled back a savepoint (drop its targets) or the root (drop all)."""
    frames: dict[SessionTransaction, _Targets] | None = session.info.get(_PENDING)
    if not frames:
        return
    nested = session.get_nested_transaction()
    if nested is None:
        del session.info[_PENDING]
    else:
        frames.pop(nested, None)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """A transaction ended. Targets still held by a savepoint or root at its end were never
    committed (a committed one handed them on in ``after_commit``): drop them."""
    session.info.pop(_UPDATING, None)  # a flush ends with its subtransaction
    frames: dict[SessionTransaction, _Targets] | None = session.info.get(_PENDING)
    if not frames:
        return
    if transaction.parent is None:
        del session.info[_PENDING]
    elif transaction.nested:
        frames.pop(transaction, None)


# -- applying them ----------------------------------------------------------------------------


def _apply(targets: _Targets) -> None:
    """Invalidate ``targets`` now. In SQLAlchemy's greenlet under a running event loop (an
    ``AsyncSession``'s commit), await the async Cache methods there; otherwise, or when no
    greenlet is there to await in, call the sync ones."""
    batches = list(targets.by_cache.values())
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coroutine = _ainvalidate(batches)
        try:
            _await(coroutine)
            return
        except (MissingGreenlet, ValueError):  # not in greenlet_spawn (or no greenlet)
            coroutine.close()
    for cache, tags, keys in batches:
        _guarded(cache.delete_many, list(keys))
        if tags:
            _guarded(cache.invalidate_tags, *tags)


async def _ainvalidate(batches: list[tuple[Cache, dict[str, None], dict[str, None]]]) -> None:
    # Shielded: a cancelled commit still finishes the invalidation of what it committed.
    await asyncio.shield(_ainvalidate_all(batches))


async def _ainvalidate_all(
    batches: list[tuple[Cache, dict[str, None], dict[str, None]]],
) -> None:
    for cache, tags, keys in batches:
        if keys:
            try:
                await cache.adelete_many(list(keys))
            except Exception:
                _log_failure(list(keys))
        if tags:
            try:
                await cache.ainvalidate_tags(*tags)
            except Exception:
                _log_failure(list(tags))


def _guarded(method: Callable[..., object], *args: Any) -> None:
    if not args or args == ([],):
        return
    try:
        method(*args)
    except Exception:  # on_error="raise": the commit is done, and must not look failed
        _log_failure(args)


def _log_failure(targets: object) -> None:
    # Keys and tags may hold user data: named at DEBUG only.
    log.error(
        "cachelayer: an invalidation after a SQLAlchemy commit failed; the entries may "
        "live to their TTL",
        exc_info=True,
    )
    log.debug("cachelayer: the invalidation that failed: %s", targets)


# -- statements: ORM-enabled update(), delete(), insert() ---------------------------------------


def _on_orm_execute(orm_state: ORMExecuteState) -> Result[Any] | None:
    if not (orm_state.is_update or orm_state.is_delete or orm_state.is_insert):
        return None
    if not orm_state.is_orm_statement:
        return None  # a statement on a Table: not seen (docs/sqlalchemy.md)
    mapper = orm_state.bind_mapper
    if mapper is None:
        return None
    rules = _registry.rules_touching(mapper)
    if not rules:
        return None
    session = orm_state.session
    resolvable = [rule for rule in rules if issubclass(mapper.class_, rule.model)]
    for rule in rules:
        if rule not in resolvable:  # a subclass's rule: its columns are not the statement's
            _collect_unresolved(rule, session, f"a statement on {mapper.class_.__name__}")
    if orm_state.is_insert:
        _inserted(orm_state, resolvable)
        return None
    return _updated_or_deleted(orm_state, mapper, resolvable)


def _inserted(orm_state: ORMExecuteState, rules: list[ModelInvalidation]) -> None:
    """An ORM insert: rows are rendered from its parameter dictionaries."""
    params: Any = orm_state.parameters
    rows: list[Mapping[str, Any]] = (
        list(params) if isinstance(params, list) else [params] if params else []
    )
    statement = orm_state.statement
    plain = getattr(statement, "select", None) is None and not any(  # not from_select()
        # a dialect's own insert (postgresql, sqlite, mysql) may be an upsert, which
        # updates rows whose old values no parameter holds
        cls.__module__.startswith("sqlalchemy.dialects.")
        for cls in type(statement).__mro__
    )
    for rule in rules:
        if plain and rows and all(all(root in row for root in rule.roots) for row in rows):
            _collect(rule, orm_state.session, rows)
        else:
            _collect_unresolved(
                rule,
                orm_state.session,
                "an insert() whose rows are not all in its parameters, or an upsert",
            )


def _updated_or_deleted(
    orm_state: ORMExecuteState, mapper: Mapper[Any], rules: list[ModelInvalidation]
) -> Result[Any]:
    """Read the rows the statement will touch, run it, and for an UPDATE read them again."""
    session = orm_state.session
    cls = mapper.class_
    pk_keys = _pk_keys(mapper)
    names = [*pk_keys, *sorted({root for rule in rules for root in rule.roots} - set(pk_keys))]
    limit = max(rule.max_bulk_rows for rule in rules)
    params: Any = orm_state.parameters
    statement: Any = orm_state.statement
    by_pk = isinstance(params, list)  # an ORM bulk UPDATE by primary key

    def read(where: Any, read_params: Any, lock: bool) -> list[dict[str, Any]]:
        query = select(*(getattr(cls, name) for name in names))
        if where is not None:
            query = query.where(where)
        if lock:  # the rows read cannot change before the statement runs
            query = query.with_for_update(of=cls)
        found = session.execute(
            query.limit(limit + 1), read_params, bind_arguments=orm_state.bind_arguments
        ).all()
        rows = {tuple(row[: len(pk_keys)]): dict(zip(names, row, strict=True)) for row in found}
        return list(rows.values())

    unresolved: str | None = None
    before: list[dict[str, Any]] = []
    pks: list[tuple[Any, ...]] = []
    if not by_pk:  # the statement's own WHERE (none: every row), with its parameters
        before = read(statement.whereclause, params or None, lock=True)
        pks = [tuple(row[key] for key in pk_keys) for row in before]
    elif statement.whereclause is not None:
        unresolved = "an executemany update() with a WHERE"
    else:
        try:
            pks = [tuple(row[key] for key in pk_keys) for row in params]
        except (KeyError, TypeError):
            unresolved = "a bulk update() whose rows lack their primary key"
        else:
            before = read(_pk_in(mapper, pk_keys, pks), None, lock=True)

    result = orm_state.invoke_statement()

    if unresolved is None and not by_pk and isinstance(result, CursorResult):
        count = result.rowcount  # -1 or None where the driver cannot tell
        if count is not None and count > len(before) and len(before) <= limit:
            unresolved = f"a statement that touched {count} rows where {len(before)} were read"
    after: list[dict[str, Any]] = []
    if unresolved is None and orm_state.is_update and pks and len(before) <= limit:
        with session.no_autoflush:
            after = read(_pk_in(mapper, pk_keys, pks), None, lock=False)
    for rule in rules:
        if len(before) > rule.max_bulk_rows:
            _collect_unresolved(
                rule, session, f"a statement touching more than {rule.max_bulk_rows} rows"
            )
            continue
        if unresolved is not None:
            _collect_unresolved(rule, session, unresolved)
        _collect(rule, session, [*before, *after])
    return result


def _pk_in(mapper: Mapper[Any], pk_keys: list[str], pks: list[tuple[Any, ...]]) -> Any:
    if len(pk_keys) == 1:
        return getattr(mapper.class_, pk_keys[0]).in_([pk[0] for pk in pks])
    return tuple_(*(getattr(mapper.class_, key) for key in pk_keys)).in_(pks)


# -- the session listeners, installed while any rule exists ---------------------------------------


class _Registry:
    """The live rules, and the Session-wide listeners they share."""

    _session_listeners: tuple[tuple[str, Callable[..., Any]], ...] = (
        ("after_commit", _after_commit),
        ("after_rollback", _after_rollback),
        ("after_transaction_end", _after_transaction_end),
        ("do_orm_execute", _on_orm_execute),
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[ModelInvalidation] = []

    def add(self, rule: ModelInvalidation) -> None:
        with self.lock:
            if not self.rules:
                for name, listener in self._session_listeners:
                    event.listen(Session, name, listener)
            self.rules.append(rule)

    def remove(self, rule: ModelInvalidation) -> None:
        with self.lock:
            if rule not in self.rules:
                return
            self.rules.remove(rule)
            if not self.rules:
                for name, listener in self._session_listeners:
                    event.remove(Session, name, listener)

    def rules_touching(self, mapper: Mapper[Any]) -> list[ModelInvalidation]:
        """The rules for the mapper's class, its superclasses and its subclasses."""
        cls = mapper.class_
        with self.lock:
            return [r for r in self.rules if issubclass(cls, r.model) or issubclass(r.model, cls)]


_registry = _Registry()
