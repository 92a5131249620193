"""One read of a forged compressed entry: peak memory and time, one command.

Usage::

    python bench/bench_bomb.py [NAME:MIB ...]     # default: json:511 msgpack:511

Someone who can write to the store (but has no signing key) plants a small zstd frame
whose payload decodes into many objects: ``[[],[],...]`` for JSON, a msgpack array of
nils (or of empty arrays) for msgpack. MIB is the decompressed size: 511 MiB (just under
the old 512 MiB cap) makes a frame of about 48 KiB for JSON and 16 KiB for msgpack. Each
bomb is built here, then read once by a fresh child process, which plants it in a memory
store and times one ``cache.get`` of it: the peak RSS growth (``VmHWM``) during the
read, its wall time, what it returned and the decode errors counted.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = struct.Struct(">2sBBBBIQQ")
FLAG_ZSTD = 0x01


BOMBS = {
    # name: (codec, codec id, head, repeated unit, tail); JSON ``[[],[],...]`` (a list per
    # 3 bytes), msgpack ``[nil, nil, ...]`` (a pointer per byte) or ``[[], [], ...]``
    "json": ("json", 1, b"[", b"[],", b"[]]"),
    "msgpack": ("msgpack", 2, b"", b"\xc0", b""),
    "msgpack-lists": ("msgpack", 2, b"", b"\x90", b""),
}


def build(name: str, mib: float) -> bytes:
    """An unsigned version 1 envelope: a zstd frame that decompresses to ``mib`` MiB."""
    import zstandard

    codec, codec_id, head, unit, tail = BOMBS[name]
    count = int(mib * 1024 * 1024) // len(unit)
    if codec == "msgpack":
        head = b"\xdd" + count.to_bytes(4, "big")  # array 32 of ``count`` items
    frame = zstandard.ZstdCompressor(level=3).compress(head + unit * count + tail)
    return HEADER.pack(b"cL", 1, codec_id, FLAG_ZSTD, 0, 0, 0, 0) + frame


def _peak_kib() -> int:
    """This process's peak RSS in KiB. VmHWM, not ru_maxrss: after fork and exec, Linux
    reports the parent's peak in ru_maxrss when it was larger (the bombs built here)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(path: str, codec: str) -> None:
    """Plant the bomb, read it once, print a JSON line of figures."""
    from cachelayer import Cache
    from cachelayer.backends.memory import MemoryStore

    raw = Path(path).read_bytes()
    store = MemoryStore()
    cache = Cache(store, namespace="bomb", codec=codec)
    cache.set("warm", [1])  # import and warm the codecs before measuring
    cache.get("warm")
    store.set(cache.engine.keys.full("k"), raw, None)
    before = _peak_kib()
    started = time.perf_counter()
    value = cache.get("k", "MISS")
    seconds = time.perf_counter() - started
    peak = _peak_kib()
    print(
        json.dumps(
            {
                "codec": codec,
                "stored_bytes": len(raw),
                "peak_growth_mib": round((peak - before) / 1024, 1),
                "seconds": round(seconds, 3),
                "returned": "MISS" if value == "MISS" else type(value).__name__,
                "decode_errors": cache.stats.decode_errors,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "bombs",
        nargs="*",
        default=["json:511", "msgpack:511"],
        help="NAME:MIB, NAME one of " + ", ".join(BOMBS) + " (default: json:511 msgpack:511)",
    )
    parser.add_argument("--child", nargs=2, metavar=("PATH", "CODEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.bombs:
            name, mib = spec.split(":")
            codec = BOMBS[name][0]
            path = Path(tmp) / f"{name}.bomb"
            path.write_bytes(build(name, float(mib)))
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), codec],
                check=False,
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(json.dumps({"bomb": spec, "died": out.returncode}), flush=True)
            else:
                print(json.dumps({"bomb": spec, **json.loads(out.stdout)}), flush=True)


if __name__ == "__main__":
    main()
