"""The public surface: __all__ is complete and import cachelayer stays light."""

from __future__ import annotations

import subprocess
import sys

import cachelayer


def test_all_lists_every_public_name() -> None:
    """Every public attribute of the package is in __all__, and every name exists."""
    public = {
        name
        for name in dir(cachelayer)
        if not name.startswith("_")
        and name not in {"annotations", "backends", "errors"}
        and not isinstance(getattr(cachelayer, name), type(sys))
    }
    assert public | {"__version__"} == set(cachelayer.__all__)
    for name in cachelayer.__all__:
        assert hasattr(cachelayer, name)


def test_issue_api_names_exist() -> None:
    """The Cache has the sync and async method names the contract promises."""
    names = [
        "get", "set", "delete", "get_many", "set_many", "delete_many", "get_or_load",
        "cached", "aget", "aset", "adelete", "aget_many", "aset_many", "adelete_many",
        "aget_or_load",
    ]  # fmt: skip
    for name in names:
        assert callable(getattr(cachelayer.Cache, name)), name


def test_import_is_light() -> None:
    """import cachelayer pulls in neither redis-py, msgpack, zstandard nor integrations."""
    code = (
        "import sys, cachelayer; "
        "heavy = [m for m in ('redis', 'msgpack', 'zstandard', 'django', 'fastapi', "
        "'cachelayer.testing', 'cachelayer.backends.redis') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
