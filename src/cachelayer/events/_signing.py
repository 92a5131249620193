"""Signing events: HMAC-SHA256 over the exact payload bytes, keys named by a key id.

A :class:`Signer` holds one key; a :class:`Verifier` holds every key a reader accepts
(the new one and the old one while a rotation is under way), chosen by the key id the
event names. Nothing is canonicalised: the MAC covers the bytes as sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from ..errors import ConfigurationError
from ._refused import Refused

__all__ = ["MIN_SECRET_BYTES", "Signer", "Verifier"]

#: the shortest secret accepted (HMAC-SHA256's block of entropy, 256 bits)
MIN_SECRET_BYTES = 32
KID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SIGNATURE_RE = re.compile(rb"[0-9a-f]{64}")


def _secret(kid: str, secret: bytes | str) -> bytes:
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise ConfigurationError(
            f"key id {kid!r:.80}: 1-64 characters of [A-Za-z0-9_.-] (it travels in clear)"
        )
    raw = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not isinstance(raw, bytes):
        raise ConfigurationError(f"the secret of key {kid!r} is bytes or str")
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the secret of key {kid!r} is {len(raw)} bytes; event secrets are at least "
            f"{MIN_SECRET_BYTES} (make one with: python -c "
            "'import secrets; print(secrets.token_hex(32))')"
        )
    return raw


def mac(secret: bytes, payload: bytes) -> str:
    """The signature of ``payload``: HMAC-SHA256 in lower-case hex (64 digits)."""
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


class Signer:
    """Signs payloads with one key.

    Args:
        kid: the key id, sent with every event so readers pick the key
            (``[A-Za-z0-9_.-]``, 1-64 characters; not secret).
        secret: at least 32 bytes (a ``str`` is its UTF-8 encoding).

    Raises:
        ConfigurationError: a bad key id or a short secret.
    """

    def __init__(self, kid: str, secret: bytes | str) -> None:
        self._secret = _secret(kid, secret)
        self.kid = kid

    def sign(self, payload: bytes) -> str:
        """The hex signature of ``payload``."""
        return mac(self._secret, payload)

    def __repr__(self) -> str:
        return f"Signer(kid={self.kid!r})"  # never the secret


class Verifier:
    """Verifies signatures made with any of several keys, chosen by key id.

    Args:
        keys: ``{kid: secret}``; during a rotation, the new key and the old one.

    Raises:
        ConfigurationError: no keys, a bad key id or a short secret.
    """

    def __init__(self, keys: Mapping[str, bytes | str]) -> None:
        if not keys:
            raise ConfigurationError("a Verifier needs at least one key ({kid: secret})")
        self._keys = {kid: _secret(kid, secret) for kid, secret in keys.items()}

    @property
    def kids(self) -> tuple[str, ...]:
        """The key ids this verifier accepts."""
        return tuple(self._keys)

    def verify(self, payload: bytes, kid: str | bytes, signature: str | bytes) -> None:
        """Check ``signature`` over ``payload`` with the key ``kid`` (constant time).

        Raises:
            Refused: ``unknown_kid`` or ``bad_signature``.
        """
        if isinstance(kid, bytes):
            try:
                kid = kid.decode("ascii")
            except UnicodeDecodeError:
                raise Refused("unknown_kid") from None
        secret = self._keys.get(kid)
        if secret is None:
            raise Refused("unknown_kid")
        sig = signature.encode("ascii", "replace") if isinstance(signature, str) else signature
        if not SIGNATURE_RE.fullmatch(sig) or not hmac.compare_digest(
            sig, mac(secret, payload).encode("ascii")
        ):
            raise Refused("bad_signature")

    def __repr__(self) -> str:
        return f"Verifier(kids={list(self._keys)!r})"
