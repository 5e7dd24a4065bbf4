"""API keys: `Authorization: Bearer KEY`, compared in constant time; /health stays open."""
from __future__ import annotations

import hmac
import os
from collections.abc import Iterable

from ttscale.serve.errors import APIError

ENV_KEYS = "TTSCALE_API_KEYS"  # comma-separated
OPEN_PATHS = frozenset({"/health"})


def load_keys(keys: Iterable[str] = (), env: dict[str, str] | None = None) -> list[str]:
    """Keys given on the command line plus those in $TTSCALE_API_KEYS; empty means no auth."""
    env = os.environ if env is None else env
    from_env = [k.strip() for k in env.get(ENV_KEYS, "").split(",") if k.strip()]
    return [k for k in [*keys, *from_env] if k]


class KeyChecker:
    """Checks a request's bearer token against the configured keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, path: str, authorization: str | None) -> None:
        """Raise a 401 unless `path` is open or the header holds a valid key."""
        if not self._keys or path in OPEN_PATHS:
            return
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in self._keys:  # compare with every key: no early exit that times the match
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
