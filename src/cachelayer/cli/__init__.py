"""The operations commands ``cachelayer profile`` and ``cachelayer doctor``.

See docs/operations.md.

Never imported by ``import cachelayer``: they need redis-py (and rich for their tables).
"""
