"""The preallocated KV cache of the torch engine: fixed shapes, written by position.

One tensor holds keys and values of every layer: [n_layer, 2, rows, n_kv_head, length + 1,
head_dim]. A row is one sequence being decoded; the extra last position (`scratch`) absorbs
the writes of padding tokens and is never attended to.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, rows: int, n_kv_head: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        self.rows, self.length = rows, length
        self.kv = torch.zeros(n_layer, 2, rows, n_kv_head, length + 1, head_dim, dtype=dtype,
                              device=device)

    @property
    def scratch(self) -> int:
        """The position padding tokens write to."""
        return self.length

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer i, each [rows, n_kv_head, length + 1, head_dim]."""
        return self.kv[i, 0], self.kv[i, 1]

    def copy_rows(self, src: list[int], dst: list[int], length: int) -> None:
        """Copy positions 0..length-1 of rows `src` onto rows `dst` (pairwise)."""
        if not dst:
            return
        dev = self.kv.device
        s = torch.tensor(src, device=dev)
        d = torch.tensor(dst, device=dev)
        self.kv[:, :, d, :, :length] = self.kv[:, :, s, :, :length]

    def read(self, row: int, start: int, end: int) -> torch.Tensor:
        """[n_layer, 2, n_kv_head, end-start, head_dim]: the KV of positions start..end-1 of a row."""
        return self.kv[:, :, row, :, start:end]

    def write(self, row: int, start: int, kv: torch.Tensor) -> None:
        """Store `kv` (as returned by `read`) at positions start.. of a row."""
        self.kv[:, :, row, :, start:start + kv.shape[3]] = kv
