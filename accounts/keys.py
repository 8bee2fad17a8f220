"""API key format: `txk_<prefix>_<secret>`.

The prefix (12 characters) is stored in clear and shown in lists so people can tell keys apart; the
secret (43 characters, 256 bits) is shown once. Only the SHA-256 of the whole key is stored. A slow
password hash is unnecessary for 256 random bits and would cost milliseconds on every request.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "txk_"


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    full_key: str


def key_generate() -> tuple[str, str]:
    """Return (prefix, full_key) for a new key."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return prefix, f"{KEY_PREFIX}{prefix}_{secret}"


def key_digest(full_key: str) -> str:
    return hashlib.sha256(full_key.encode()).hexdigest()


def key_parse(raw: str) -> ParsedKey | None:
    if not raw.startswith(KEY_PREFIX):
        return None
    prefix, sep, secret = raw[len(KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or not secret:
        return None
    return ParsedKey(prefix=prefix, full_key=raw)


def key_matches(full_key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(key_digest(full_key), stored_digest)
