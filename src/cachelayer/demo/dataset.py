"""Builds the demo database once: users with profiles, preferences, orders and items.

The rows come from a seeded generator, so every build of the same size holds the same
data. A SQLite file is built under a temporary name and renamed when complete, so an
interrupted build is never mistaken for a finished one; a PostgreSQL database is marked
complete in the ``demo_meta`` table as the build's last step.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

#: Bump when the schema or the generator changes: older files are then rebuilt.
SCHEMA_VERSION = 1
SEED = 20261127
BATCH = 5000

_FIRST = ["Ada", "Alan", "Barbara", "Claude", "Dennis", "Edsger", "Frances", "Grace"]
_LAST = ["Lovelace", "Turing", "Liskov", "Shannon", "Ritchie", "Dijkstra", "Hopper"]
_CITIES = ["Lisbon", "Oslo", "Lyon", "Kyoto", "Austin", "Porto", "Tartu", "Bergen"]
_WORDS = [
    "coffee", "hiking", "jazz", "databases", "chess", "cycling", "photography", "sourdough",
    "gardening", "running", "novels", "python", "climbing", "travel", "cinema", "sailing",
]  # fmt: skip
_PREFS = {
    "theme": ["light", "dark", "system"],
    "language": ["en", "fr", "de", "pt", "ja"],
    "currency": ["EUR", "USD", "JPY", "GBP"],
    "newsletter": ["weekly", "monthly", "never"],
    "timezone": ["UTC", "Europe/Lisbon", "America/Chicago", "Asia/Tokyo"],
    "notifications": ["email", "push", "none"],
}
_STATUSES = ["delivered"] * 8 + ["shipped", "cancelled"]
_EPOCH = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc)


def default_sqlite_path(users: int) -> Path:
    """Where the SQLite database of ``users`` users is kept between runs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cachelayer" / f"demo-s{SCHEMA_VERSION}-{users}-users.sqlite3"


def _rows(users: int) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Every row to insert, as ``(table, values)``, parents before children."""
    rng = random.Random(SEED)
    order_id = item_id = pref_id = 0
    for uid in range(1, users + 1):
        joined = _EPOCH + dt.timedelta(seconds=rng.randrange(5 * 365 * 86400))
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        yield "user", (uid, f"user{uid}@example.com", name, joined, 1)
        bio = " ".join(rng.choices(_WORDS, k=rng.randrange(12, 40)))
        city = rng.choice(_CITIES)
        avatar = f"https://img.example.com/u/{uid}.png"
        yield "profile", (uid, uid, bio, city, avatar, rng.randrange(5000))
        for key in rng.sample(sorted(_PREFS), rng.randrange(3, 7)):
            pref_id += 1
            yield "preference", (pref_id, uid, key, rng.choice(_PREFS[key]))
        for _ in range(min(40, int(rng.expovariate(1 / 5)))):
            order_id += 1
            created = joined + dt.timedelta(seconds=rng.randrange(365 * 86400))
            items = []
            total = Decimal(0)
            for _ in range(rng.randrange(1, 5)):
                item_id += 1
                price = Decimal(rng.randrange(199, 19999)) / 100
                quantity = rng.randrange(1, 4)
                total += price * quantity
                sku = f"SKU-{rng.randrange(100000):05d}"
                title = f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)}"
                items.append((item_id, order_id, sku, title, quantity, price))
            yield "order", (order_id, uid, created, rng.choice(_STATUSES), total)
            for item in items:
                yield "orderitem", item


_INSERT = {
    "user": ("demo_user", "id, email, name, joined_at, version"),
    "profile": ("demo_profile", "id, user_id, bio, city, avatar_url, loyalty_points"),
    "preference": ("demo_preference", "id, user_id, key, value"),
    "order": ("demo_order", "id, user_id, created_at, status, total"),
    "orderitem": ("demo_orderitem", "id, order_id, sku, title, quantity, unit_price"),
}


def is_built(users: int) -> bool:
    """Whether the configured database holds a complete build of ``users`` users."""
    from django.db import connection

    if "demo_meta" not in connection.introspection.table_names():
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM demo_meta WHERE name = %s", ["build"])
        row = cursor.fetchone()
    return row is not None and row[0] == f"s{SCHEMA_VERSION}-{users}"


def build(users: int, progress: Callable[[int], None]) -> None:
    """Create the tables and fill them; ``progress(n)`` is called as users are written."""
    from django.apps import apps
    from django.core.management.color import no_style
    from django.db import connection, transaction

    models = list(apps.get_app_config("demo").get_models())
    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in reversed(models):
            if model._meta.db_table in existing:
                editor.delete_model(model)
        for model in models:
            editor.create_model(model)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS demo_meta")
        cursor.execute("CREATE TABLE demo_meta (name VARCHAR(40) PRIMARY KEY, value TEXT)")
    pending: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _INSERT}

    def flush(cursor: Any) -> None:
        for table, rows in pending.items():
            if rows:
                name, columns = _INSERT[table]
                if connection.vendor == "postgresql":
                    # COPY: several times faster than INSERTs for a million rows.
                    with cursor.cursor.copy(f"COPY {name} ({columns}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    marks = ", ".join(["%s"] * len(rows[0]))
                    sql = f"INSERT INTO {name} ({columns}) VALUES ({marks})"  # noqa: S608
                    cursor.executemany(sql, rows)
                rows.clear()

    with transaction.atomic(), connection.cursor() as cursor:
        done = 0
        for table, row in _rows(users):
            pending[table].append(row)
            if table == "user":
                done += 1
                if done % BATCH == 0:
                    flush(cursor)
                    progress(BATCH)
        flush(cursor)
        progress(done % BATCH)
        for sql in connection.ops.sequence_reset_sql(no_style(), models):
            cursor.execute(sql)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA journal_mode=WAL")  # not inside a transaction
        cursor.execute("ANALYZE")
        # Last: the mark that the build is complete.
        cursor.execute(
            "INSERT INTO demo_meta (name, value) VALUES (%s, %s)",
            ["build", f"s{SCHEMA_VERSION}-{users}"],
        )
