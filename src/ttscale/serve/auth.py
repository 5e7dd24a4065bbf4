"""API keys: `Authorization: Bearer KEY`, compared in constant time; /health stays open.

Keys come from a file (`--api-key-file`) or the environment (`TTSCALE_API_KEY`, or several
comma-separated in `TTSCALE_API_KEYS`), never only the command line, where every local user
can read them in the process list (`--api-key` stays, for tests).
"""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ttscale.errors import TTScaleError

from ttscale.serve.errors import APIError

ENV_KEY = "TTSCALE_API_KEY"  # one key
ENV_KEYS = "TTSCALE_API_KEYS"  # comma-separated
OPEN_PATHS = frozenset({"/health"})
log = logging.getLogger("ttscale.serve")


def read_key_file(path: str | Path) -> list[str]:
    """Keys in a file, one per line (blank lines and `#` comments skipped). A file that other
    users may read gets a warning; a missing or empty one is an error."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise TTScaleError(f"--api-key-file {str(p)!r} cannot be read ({e.strerror}); accepted: "
                           "a file with one key per line") from None
    keys = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise TTScaleError(f"--api-key-file {str(p)!r} holds no key; accepted: a file with one "
                           "key per line")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("%s can be read by other users; chmod 600 it", p)
    return keys


def load_keys(keys: Iterable[str] = (), env: dict[str, str] | None = None,
              files: Iterable[str | Path] = ()) -> list[str]:
    """Keys from key files, $TTSCALE_API_KEY, $TTSCALE_API_KEYS and (for tests) the command
    line; empty means no auth."""
    env = os.environ if env is None else env
    from_files = [k for f in files for k in read_key_file(f)]
    from_env = [env.get(ENV_KEY, "").strip()]
    from_env += [k.strip() for k in env.get(ENV_KEYS, "").split(",")]
    return list(dict.fromkeys(k for k in [*from_files, *keys, *from_env] if k))


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
