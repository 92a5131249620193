"""``CacheDep``: the FastAPI annotation for the app's Cache (the one part needing FastAPI)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from .._cache import Cache
from ._lifespan import get_cache

__all__ = ["CacheDep"]

#: ``async def endpoint(cache: CacheDep)``: the same as ``cache: Cache = Depends(get_cache)``.
CacheDep = Annotated[Cache, Depends(get_cache)]
