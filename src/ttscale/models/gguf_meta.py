"""The header of a GGUF file (llama.cpp's format): metadata and tensor shapes, no weights.

A small reader of the documented layout (magic `GGUF`, version 2 or 3, counts, key/value
pairs, tensor infos), so that validating a `.gguf` model and counting its FLOPs needs neither
the `gguf` package nor reading the weights. Long arrays (the tokenizer's vocabulary) are
skipped, not kept.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

from ttscale.errors import TTScaleError

MAGIC = b"GGUF"
KEEP_ARRAY = 64  # arrays longer than this are skipped
# value types of the format: id -> struct code (8 = string, 9 = array are read apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFHeader:
    """What a GGUF file says of itself: metadata (short values) and each tensor's shape."""

    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def n_params(self) -> int:
        return sum(prod(s) for s in self.tensors.values())


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Metadata and tensor shapes of the GGUF file `path`; a TTScaleError if it is not one."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != MAGIC:
                raise TTScaleError(f"{str(path)!r} is not a GGUF file (no 'GGUF' magic); "
                                   "accepted: a llama.cpp .gguf model file")
            version, n_tensors, n_kv = struct.unpack("<IQQ", _exact(f, 20))
            if version not in (2, 3):
                raise TTScaleError(f"{str(path)!r}: GGUF version {version} is not supported; "
                                   "accepted: 2, 3")
            header = GGUFHeader(version)
            for _ in range(n_kv):
                key = _string(f)
                value = _value(f, struct.unpack("<I", _exact(f, 4))[0])
                if value is not _SKIPPED:
                    header.metadata[key] = value
            for _ in range(n_tensors):
                name = _string(f)
                (n_dims,) = struct.unpack("<I", _exact(f, 4))
                dims = struct.unpack(f"<{n_dims}Q", _exact(f, 8 * n_dims))
                _exact(f, 12)  # ggml type (uint32) and data offset (uint64)
                header.tensors[name] = tuple(int(d) for d in dims)
            return header
    except OSError as e:
        raise TTScaleError(f"cannot read GGUF file {str(path)!r}: {e}") from None
    except (struct.error, UnicodeDecodeError, _Truncated):
        raise TTScaleError(f"{str(path)!r} is a truncated or corrupt GGUF file") from None


class _Truncated(Exception):
    pass


_SKIPPED = object()


def _exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Truncated
    return data


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _exact(f, 8))
    return _exact(f, n).decode("utf-8")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        code = _SCALARS[vtype]
        return struct.unpack(code, _exact(f, struct.calcsize(code)))[0]
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        itype, count = struct.unpack("<IQ", _exact(f, 12))
        if itype in _SCALARS and count > KEEP_ARRAY:  # skip without decoding
            _exact(f, count * struct.calcsize(_SCALARS[itype]))
            return _SKIPPED
        items = [_value(f, itype) for _ in range(count)]
        return items if count <= KEEP_ARRAY else _SKIPPED
    raise _Truncated  # an unknown type id: the file is not what it claims to be
