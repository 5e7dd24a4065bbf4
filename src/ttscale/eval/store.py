"""Append-only JSONL stores that survive being killed: results and per-problem samples.

Every record carries a `key`, a hash of what identifies it (model, task, problem, strategy,
parameters, budget, seed). Records are written one line at a time and flushed at once, so a
run killed at any moment leaves only whole records behind, plus at most one truncated last
line. Opening a store drops that truncated line, and `done` tells a resumed run which keys
to skip, so a resumed run ends with exactly the records of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ttscale.errors import TTScaleError

RESULTS_FILE = "results.jsonl"
SAMPLES_FILE = "samples.jsonl"


def record_key(**fields: Any) -> str:
    """A stable short hash of identifying fields (order-independent, JSON-canonical)."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def read_jsonl(path: str | Path, *, tolerate_truncated_tail: bool = True) -> list[dict[str, Any]]:
    """Every record of a JSONL file. A truncated last line (a killed writer) is skipped;
    a malformed line anywhere else is an error naming its line number."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            is_tail = i == len(lines) - 1  # no newline after it: the writer died mid-line
            if is_tail and tolerate_truncated_tail:
                continue
            raise TTScaleError(f"{path}:{i + 1}: malformed JSON line; expected one JSON "
                               "object per line") from None
    return out


class JsonlStore:
    """One append-only JSONL file of keyed records, flushed as written."""

    def __init__(self, path: str | Path, *, resume: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not resume:
            self.path.unlink()
        self._repair_tail()
        self._records: dict[str, dict[str, Any]] = {}
        for rec in read_jsonl(self.path):
            self._records.setdefault(rec["key"], rec)
        self._fh = open(self.path, "a", encoding="utf-8")

    def _repair_tail(self) -> None:
        """Cut a truncated last line, so the next append starts on a line of its own."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def records(self) -> Iterator[dict[str, Any]]:
        return iter(self._records.values())

    @property
    def done(self) -> set[str]:
        return set(self._records)

    def append(self, record: dict[str, Any]) -> bool:
        """Write one record (it must have a `key`) unless its key is already stored.

        Returns whether it was written. The line goes to the OS at once (one write call),
        so a killed process loses nothing it reported as written.
        """
        key = record.get("key")
        if not key:
            raise TTScaleError("a stored record needs a non-empty 'key'")
        if key in self._records:
            return False
        self._fh.write(json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n")
        self._fh.flush()
        if os.environ.get("TTSCALE_FSYNC") == "1":
            os.fsync(self._fh.fileno())
        self._records[key] = record
        return True

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "JsonlStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """The result records of a sweep directory (one per problem, strategy, parameters, budget, seed)."""
    path = Path(results_dir) / RESULTS_FILE
    if not path.exists():
        raise TTScaleError(f"no {RESULTS_FILE} in {str(results_dir)!r}; run `ttscale sweep --out "
                           f"{results_dir}` first")
    return read_jsonl(path)


def split_side(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(headline records, records of a side scorer such as the checker): the headline never
    mixes the two (`SweepConfig.side_scorers`)."""
    main = [r for r in records if not r.get("side_scorer")]
    return main, [r for r in records if r.get("side_scorer")]


def load_samples(results_dir: str | Path) -> list[dict[str, Any]]:
    """The per-problem sample stores of a sweep directory (empty when it has none)."""
    return read_jsonl(Path(results_dir) / SAMPLES_FILE)
