"""What a type checker sees: decorated methods bind, loaders type their results.

Runs mypy --strict on a small module (as a team's CI would) and reads its reveal_type
notes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

SOURCE = """
from cachelayer import Cache, Fresh

cache = Cache()

class Repo:
    @cache.cached(ttl=60, key="item:{item_id}")
    def item(self, item_id: int) -> str:
        return str(item_id)

    @cache.cached(ttl=60, key="aitem:{item_id}")
    async def aitem(self, item_id: int) -> str:
        return str(item_id)

def load() -> int:
    return 1

def load_fresh() -> Fresh[str]:
    return Fresh("x", ttl=5)

async def aload() -> dict[str, int]:
    return {}

repo = Repo()
reveal_type(repo.item(1))
reveal_type(repo.item.invalidate(1))
reveal_type(cache.get_or_load("k", load))
reveal_type(cache.get_or_load("k", load_fresh, ttl=30, tags=["t"]))

async def main() -> None:
    reveal_type(await repo.aitem(1))
    reveal_type(await cache.aget_or_load("k", aload))
"""


def test_mypy_strict_accepts_methods_and_types_loaders(tmp_path: Path) -> None:
    """repo.item(1) type-checks (mypy reported a missing argument before), and
    get_or_load returns its loader's type, unwrapping Fresh (it returned Any)."""
    module = tmp_path / "sample.py"
    module.write_text(textwrap.dedent(SOURCE))
    out, err, _ = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c"), str(module)]
    )
    revealed = [
        line.split("Revealed type is ")[1] for line in out.splitlines() if "Revealed" in line
    ]
    assert revealed == [
        '"str"',
        '"bool"',
        '"int"',
        '"str"',
        '"str"',
        '"dict[str, int]"',
    ], out + err
    assert "error" not in out, out
