"""invalidate_on: committed writes to a model invalidate tags and keys, after the commit.

Against a real SQLite database (djapp) and a real Cache on memory and Redis. Entries are
cached with tags through get_or_load, as a decorated view would; a test then writes in a
transaction and checks the entry is still there before the commit and gone after it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings

from cachelayer import MISSING, Cache
from cachelayer.django import invalidate_on
from cachelayer.django._invalidation import registered_rules
from tests.integrations.djapp.db import database
from tests.integrations.djapp.models import (
    Customer,
    CustomerProxy,
    Order,
    Post,
    Tag,
    VipCustomer,
)

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def db() -> Iterator[None]:
    with database():
        yield


def cached(cache: Cache, key: str, *tags: str) -> None:
    """Cache a value under ``key`` with ``tags``, as a decorated function would."""
    cache.get_or_load(key, lambda: f"value of {key}", 60, tags=list(tags))
    assert present(cache, key)


class RollBack(Exception):
    pass


def rolled_back(write: Callable[[], object]) -> None:
    """Run ``write`` in a transaction (a savepoint inside one) that then rolls back."""
    try:
        with transaction.atomic():
            write()
            raise RollBack
    except RollBack:
        pass


def present(cache: Cache, key: str) -> bool:
    return cache.get(key, MISSING) is not MISSING


def customer(name: str = "Ada") -> Customer:
    return Customer.objects.create(name=name, joined=NOW, balance=Decimal("1.00"))


def test_save_invalidates_after_commit_not_before(db: None, cache: Cache, rules: Any) -> None:
    """Inside the transaction the entry is still cached (a reader would still see the
    committed row); the commit invalidates it."""
    ada = customer()
    rules(Customer, tags=["customer:{pk}"], cache=cache)
    cached(cache, "profile", f"customer:{ada.pk}")
    with transaction.atomic():
        ada.name = "Ada L."
        ada.save()
        assert present(cache, "profile")
    assert not present(cache, "profile")


def test_rolled_back_write_invalidates_nothing(db: None, cache: Cache, rules: Any) -> None:
    """A transaction that rolls back, and a savepoint rolled back inside a committed one,
    invalidate nothing of theirs."""
    ada, bob = customer(), customer("Bob")
    rules(Customer, tags=["customer:{pk}"], cache=cache)
    cached(cache, "ada", f"customer:{ada.pk}")
    cached(cache, "bob", f"customer:{bob.pk}")
    rolled_back(ada.save)
    assert present(cache, "ada")
    with transaction.atomic():
        rolled_back(ada.save)  # a savepoint
        bob.save()
    assert present(cache, "ada")
    assert not present(cache, "bob")


def test_autocommit_write_invalidates_at_once(db: None, cache: Cache, rules: Any) -> None:
    """Outside a transaction (autocommit) the write has committed when the signal is
    sent: the invalidation runs then."""
    rules(Customer, tags=["customer:{pk}"], cache=cache)
    ada = customer()
    cached(cache, "profile", f"customer:{ada.pk}")
    ada.save()
    assert not present(cache, "profile")


def test_delete_invalidates(db: None, cache: Cache, rules: Any) -> None:
    """Deleting the row invalidates its tags after the commit."""
    ada = customer()
    rules(Customer, tags=["customer:{pk}"], cache=cache)
    cached(cache, "profile", f"customer:{ada.pk}")
    pk = ada.pk
    with transaction.atomic():
        ada.delete()
        assert present(cache, "profile")
    assert not present(cache, "profile")
    assert pk is not None


@pytest.mark.parametrize("rebuilt", [False, True], ids=["only", "model-codec"])
def test_delete_of_an_instance_with_deferred_fields(
    db: None, cache: Cache, rules: Any, rebuilt: bool
) -> None:
    """The fields the templates name are read before the row is deleted, in one query
    for those that were deferred (by only(), or by the model codec, which keeps them
    deferred): the delete succeeds and invalidates after the commit."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from cachelayer.django import register_django_types

    ada = customer()
    made = Order.objects.create(customer=ada, total=Decimal("5.00"), placed=NOW)
    rules(
        Order, tags=["customer:{customer_id}", "total:{total}"], keys=["order:{pk}"], cache=cache
    )
    order = Order.objects.only("id").get(pk=made.pk)
    if rebuilt:
        register_django_types(cache)
        cache.set("the-order", order)
        order = cache.get("the-order")
        assert isinstance(order, Order)
        assert order.get_deferred_fields() >= {"customer_id", "total"}
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    cached(cache, "by-total", "total:5.00")
    cache.set(f"order:{made.pk}", 1)
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        order.delete()
        assert present(cache, "ada-orders")
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(reads) == 1, reads
    assert not Order.objects.exists()
    assert not present(cache, "ada-orders")
    assert not present(cache, "by-total")
    assert not present(cache, f"order:{made.pk}")


def test_a_delete_never_fails_because_of_the_rule(
    db: None, cache: Cache, rules: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A row deleted already (its deferred fields cannot be read) and a target that
    fails to format do not fail the delete: they are logged, and the targets that could
    be computed are still invalidated."""
    ada = customer()
    made = Order.objects.create(customer=ada, total=Decimal("5.00"), placed=NOW)
    rules(Order, tags=["customer:{customer_id}"], cache=cache)
    stale = Order.objects.only("id").get(pk=made.pk)
    Order.objects.filter(pk=made.pk).delete()
    stale.delete()  # the row is gone: customer_id cannot be read, nothing to invalidate
    made = Order.objects.create(customer=ada, total=Decimal("5.00"), placed=NOW)
    rules(Order, tags=[lambda order: [f"x:{order.nope}"]], cache=cache)
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    with caplog.at_level("WARNING", logger="cachelayer"):
        made.delete()
    assert not Order.objects.exists()
    assert not present(cache, "ada-orders")
    assert "nope" in caplog.text


def test_keys_are_deleted_and_callables_are_called(db: None, cache: Cache, rules: Any) -> None:
    """keys= templates name cachelayer keys to delete; tags and keys may be callables
    returning lists."""
    ada = customer()
    rules(
        Customer,
        keys=["profile:{pk}", lambda c: [f"by-name:{c.name}"]],
        tags=[lambda c: [f"t:{c.pk}", "all-customers"]],
        cache=cache,
    )
    cache.set(f"profile:{ada.pk}", 1)
    cache.set("by-name:Ada", 2)
    cache.set("unrelated", 3)
    cached(cache, "list", "all-customers")
    ada.save()
    assert not present(cache, f"profile:{ada.pk}")
    assert not present(cache, "by-name:Ada")
    assert not present(cache, "list")
    assert present(cache, "unrelated")


def test_moving_a_row_invalidates_the_old_and_the_new_owner(
    db: None, cache: Cache, rules: Any
) -> None:
    """An order moved from one customer to another invalidates both customers' tags:
    the old value is the one the order was loaded with."""
    ada, bob = customer(), customer("Bob")
    Order.objects.create(customer=ada, total=Decimal("5.00"), placed=NOW)
    rules(Order, tags=["customer:{customer_id}"], cache=cache)
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    cached(cache, "bob-orders", f"customer:{bob.pk}")
    order = Order.objects.get()
    order.customer = bob
    with transaction.atomic():
        order.save()
    assert not present(cache, "ada-orders")
    assert not present(cache, "bob-orders")
    # The next save starts from what was saved: moving it back invalidates bob and ada.
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    cached(cache, "bob-orders", f"customer:{bob.pk}")
    order.customer = ada
    order.save()
    assert not present(cache, "bob-orders")
    assert not present(cache, "ada-orders")


def test_an_unchanged_save_invalidates_only_the_current_owner(
    db: None, cache: Cache, rules: Any
) -> None:
    """A save that does not move the row does not touch other owners' tags."""
    ada, bob = customer(), customer("Bob")
    order = Order.objects.create(customer=ada, total=Decimal("5.00"), placed=NOW)
    rules(Order, tags=["customer:{customer_id}"], cache=cache)
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    cached(cache, "bob-orders", f"customer:{bob.pk}")
    order.total = Decimal("6.00")
    order.save()
    assert not present(cache, "ada-orders")
    assert present(cache, "bob-orders")


def test_a_rolled_back_move_is_invalidated_by_the_next_save(
    db: None, cache: Cache, rules: Any
) -> None:
    """The old values advance when a save commits: a move rolled back (a transaction or
    a savepoint) and then saved again and committed invalidates the owner the row still
    had in the database as well as the new one."""
    ada, bob = customer(), customer("Bob")
    Order.objects.create(customer=ada, total=Decimal("5.00"), placed=NOW)
    rules(Order, tags=["customer:{customer_id}"], cache=cache)
    order = Order.objects.get()
    order.customer_id = bob.pk
    rolled_back(order.save)
    with transaction.atomic():
        rolled_back(order.save)  # a savepoint rolled back inside a committed transaction
    assert Order.objects.get().customer_id == ada.pk
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    cached(cache, "bob-orders", f"customer:{bob.pk}")
    with transaction.atomic():
        order.save()
        assert present(cache, "ada-orders")
        assert present(cache, "bob-orders")
    assert not present(cache, "ada-orders")
    assert not present(cache, "bob-orders")


def test_update_fields_advances_only_the_fields_saved(db: None, cache: Cache, rules: Any) -> None:
    """save(update_fields=...) writes only those fields: a change to another field that
    a template names is not the database's value yet, and stays out of the old values."""
    ada, bob, cy = customer(), customer("Bob"), customer("Cy")
    Order.objects.create(customer=ada, total=Decimal("5.00"), placed=NOW)
    rules(Order, tags=["customer:{customer_id}"], cache=cache)
    order = Order.objects.get()
    order.customer_id = bob.pk  # not saved below
    order.total = Decimal("6.00")
    order.save(update_fields=["total"])
    assert Order.objects.get().customer_id == ada.pk
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    cached(cache, "bob-orders", f"customer:{bob.pk}")
    order.save()  # now the move is written: ada (still in the database) and bob
    assert not present(cache, "ada-orders")
    assert not present(cache, "bob-orders")
    # A field named in update_fields by its name (not its attname) does advance.
    order.customer_id = cy.pk
    order.save(update_fields=["customer"])
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    cached(cache, "bob-orders", f"customer:{bob.pk}")
    cached(cache, "cy-orders", f"customer:{cy.pk}")
    order.customer_id = ada.pk
    order.save()
    assert not present(cache, "cy-orders")
    assert not present(cache, "ada-orders")
    assert present(cache, "bob-orders")


def test_subclasses_and_proxies_are_covered(db: None, cache: Cache, rules: Any) -> None:
    """A rule on a model also fires for saves through its proxies and its multi-table
    children, whose signals name those classes."""
    rules(Customer, tags=["customer:{pk}"], cache=cache)
    vip = VipCustomer.objects.create(name="V", joined=NOW, balance=Decimal(1), level=2)
    cached(cache, "vip", f"customer:{vip.pk}")
    vip.save()
    assert not present(cache, "vip")
    proxy = CustomerProxy.objects.get(pk=vip.pk)
    cached(cache, "vip", f"customer:{vip.pk}")
    proxy.save()
    assert not present(cache, "vip")


def test_other_models_do_not_trigger_the_rule(db: None, cache: Cache, rules: Any) -> None:
    """Writes to another model leave the rule's tags alone."""
    ada = customer()
    rules(Order, tags=["customer:{customer_id}"], cache=cache)
    cached(cache, "ada-orders", f"customer:{ada.pk}")
    ada.save()
    Tag.objects.create(name="x")
    assert present(cache, "ada-orders")


def test_many_to_many_changes_from_either_side(db: None, cache: Cache, rules: Any) -> None:
    """add/remove/clear on the model's m2m relation invalidate the model's instances
    involved, from its own side and from the other side."""
    first, second = Post.objects.create(title="1"), Post.objects.create(title="2")
    news, misc = Tag.objects.create(name="news"), Tag.objects.create(name="misc")
    rules(Post, tags=["post:{pk}"], cache=cache)

    def both_cached() -> None:
        cached(cache, "first", f"post:{first.pk}")
        cached(cache, "second", f"post:{second.pk}")

    both_cached()
    with transaction.atomic():
        first.tags.add(news)  # the post's side
        assert present(cache, "first")
    assert not present(cache, "first")
    assert present(cache, "second")

    both_cached()
    news.posts.add(second)  # the tag's side: the posts in pk_set are invalidated
    assert present(cache, "first")
    assert not present(cache, "second")

    both_cached()
    news.posts.remove(first)
    assert not present(cache, "first")
    assert present(cache, "second")

    both_cached()
    misc.posts.add(first, second)
    both_cached()
    misc.posts.clear()  # no pk_set on clear: the posts linked before are invalidated
    assert not present(cache, "first")
    assert not present(cache, "second")

    both_cached()
    second.tags.clear()
    assert present(cache, "first")
    assert not present(cache, "second")


def test_many_to_many_rolled_back_invalidates_nothing(db: None, cache: Cache, rules: Any) -> None:
    """An m2m change in a transaction that rolls back invalidates nothing."""
    post, tag = Post.objects.create(title="1"), Tag.objects.create(name="news")
    rules(Post, tags=["post:{pk}"], cache=cache)
    cached(cache, "post", f"post:{post.pk}")
    rolled_back(lambda: tag.posts.add(post))
    assert present(cache, "post")


def test_disconnect_stops_the_rule(db: None, cache: Cache, rules: Any) -> None:
    """After disconnect() writes invalidate nothing, and the checks no longer see it."""
    ada = customer()
    rule = rules(Customer, tags=["customer:{pk}"], cache=cache)
    assert rule in registered_rules()
    rule.disconnect()
    cached(cache, "profile", f"customer:{ada.pk}")
    ada.save()
    ada.delete()
    assert present(cache, "profile")
    assert rule not in registered_rules()


def test_class_decorator_form(db: None, cache: Cache) -> None:
    """invalidate_on(tags=...) without a model decorates the model class."""
    decorate = invalidate_on(tags=["tag:{name}"], cache=cache)
    assert decorate(Tag) is Tag
    rule = next(r for r in registered_rules() if r.model is Tag)
    try:
        tag = Tag.objects.create(name="news")
        cached(cache, "news", "tag:news")
        tag.save()
        assert not present(cache, "news")
    finally:
        rule.disconnect()


def test_cache_alias_is_looked_up_at_write_time(
    db: None, rules: Any, redis_url: str, namespace: str
) -> None:
    """cache= an alias (default "default") uses that alias's shared Cache when a write
    commits."""
    from cachelayer.django import get_cache

    setting = {
        "default": {
            "BACKEND": "cachelayer.django.CacheBackend",
            "LOCATION": redis_url,
            "OPTIONS": {"namespace": namespace},
        }
    }
    ada = customer()
    rules(Customer, tags=["customer:{pk}"])
    with override_settings(CACHES=setting):
        cache = get_cache()
        try:
            cached(cache, "profile", f"customer:{ada.pk}")
            ada.save()
            assert not present(cache, "profile")
        finally:
            cache.clear()
            cache.close()


def test_mistakes_are_refused(db: None, cache: Cache, rules: Any) -> None:
    """One string instead of a list, a template that does not parse, a target that is
    neither: refused at once; a callable returning a str and a template naming a missing
    attribute fail the write loudly."""
    with pytest.raises(TypeError, match="list of templates"):
        invalidate_on(Customer, tags="customer:{pk}", cache=cache)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not parse"):
        invalidate_on(Customer, tags=["customer:{pk"], cache=cache)
    with pytest.raises(ValueError, match="attribute name"):
        invalidate_on(Customer, tags=["customer:{}"], cache=cache)
    with pytest.raises(TypeError, match="neither"):
        invalidate_on(Customer, keys=[42], cache=cache)  # type: ignore[list-item]
    assert not any(r.model is Customer for r in registered_rules())
    ada = customer()
    rule = rules(Customer, tags=[lambda c: f"customer:{c.pk}"], cache=cache)
    with pytest.raises(TypeError, match="returned the str"):
        ada.save()
    rule.disconnect()
    rules(Customer, tags=["customer:{nope}"], cache=cache)
    with pytest.raises(ValueError, match="nope"):
        ada.save()


def test_rules_listen_only_to_the_senders_concerned(rules: Any, cache: Cache) -> None:
    """A rule listens to its model (with subclasses and proxies) and its own m2m tables
    only: other models keep Django's fast deletes and fast m2m adds, which any listener
    of theirs would turn off, and their instances cost no call of the rule."""
    from django.db.models.signals import (
        m2m_changed,
        post_delete,
        post_init,
        post_save,
        pre_delete,
    )

    rules(Customer, tags=["customer:{pk}"], cache=cache)
    for signal in (post_init, post_save):
        assert signal.has_listeners(Customer)
        assert signal.has_listeners(VipCustomer)
        assert not signal.has_listeners(Order)
        assert not signal.has_listeners(Tag)
    assert pre_delete.has_listeners(Customer)
    assert post_delete.has_listeners(Customer)
    assert post_delete.has_listeners(VipCustomer)
    assert post_delete.has_listeners(CustomerProxy)
    assert not post_delete.has_listeners(Tag)
    assert not post_delete.has_listeners(Order)
    assert not m2m_changed.has_listeners(Post.tags.through)
    rule = rules(Post, tags=["post:{pk}"], cache=cache)
    assert m2m_changed.has_listeners(Post.tags.through)
    rule.disconnect()
    assert not m2m_changed.has_listeners(Post.tags.through)
    assert not post_delete.has_listeners(Post)
    assert not pre_delete.has_listeners(Post)
    assert not pre_delete.has_listeners(Tag)


def test_a_subclass_defined_after_the_rule_is_covered(db: None) -> None:
    """A proxy model defined after the rule (class_prepared) is listened to as well."""
    from django.db.models.signals import post_delete
    from django.test.utils import isolate_apps

    cache = Cache("memory://", namespace="late-subclass")
    rule = invalidate_on(Customer, tags=["customer:{pk}"], cache=cache)
    try:
        with isolate_apps("tests.integrations.djapp"):

            class LateProxy(Customer):
                class Meta:
                    app_label = "djapp"
                    proxy = True

            assert post_delete.has_listeners(LateProxy)
            ada = customer()
            cached(cache, "ada", f"customer:{ada.pk}")
            LateProxy.objects.get(pk=ada.pk).delete()
            assert not present(cache, "ada")
    finally:
        rule.disconnect()
        cache.close()


def test_rules_declared_before_the_models_are_loaded(
    db: None, cache: Cache, rules: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule declared while models are still loading (a models module, the class
    decorator) connects its m2m tables once they are known: in the app's ready(), or at
    the first m2m change of the process, which it then handles too."""
    from django.apps import apps

    from cachelayer.django._invalidation import connect_pending

    post, tag = Post.objects.create(title="1"), Tag.objects.create(name="news")
    with monkeypatch.context() as patch:
        patch.setattr(apps, "models_ready", False)
        rule = rules(Post, tags=["post:{pk}"], cache=cache)
    assert rule.m2m_senders == []
    cached(cache, "post", f"post:{post.pk}")
    tag.posts.add(post)  # the stand-in receiver connects the rule and hands it the change
    assert not present(cache, "post")
    assert rule.m2m_senders == [Post.tags.through]
    cached(cache, "post", f"post:{post.pk}")
    post.tags.remove(tag)
    assert not present(cache, "post")
    connect_pending()  # nothing left to connect: harmless
    assert rule.m2m_senders == [Post.tags.through]


def test_a_rule_declared_after_startup_is_reported(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """A rule declared once Django has started (in views.py, say) exists only where that
    module is imported: it is logged at WARNING, pointing to AppConfig.ready()."""
    with caplog.at_level("WARNING", logger="cachelayer"):
        rule = invalidate_on(Customer, tags=["customer:{pk}"], cache=cache)
    rule.disconnect()
    messages = [r.getMessage() for r in caplog.records]
    assert any("declared after Django started" in m and "AppConfig.ready()" in m for m in messages)
