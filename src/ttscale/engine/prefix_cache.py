"""Automatic prefix caching: the KV of token prefixes computed earlier, reused by later requests.

A token trie: each node is one token following its parent's prefix, and owns one slot of a
pool tensor holding that token's keys and values in every layer. A request looks up the longest
cached prefix of its prompt and copies those positions instead of computing them. The pool never
holds more than `capacity` tokens (the memory bound); when full, the least-recently-used leaf is
evicted. Touching a path from the leaf up keeps every node older than its parent in the LRU
order, so the oldest node is always a leaf and eviction never orphans a cached prefix.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

ROOT = -1


class PrefixCache:
    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, max_bytes: int):
        self.token_bytes = 2 * n_layer * n_kv_head * head_dim * torch.empty((), dtype=dtype).element_size()
        self.capacity = max(0, int(max_bytes) // self.token_bytes)
        self._shape = (n_layer, 2, n_kv_head, head_dim)
        self._dtype, self._device = dtype, torch.device(device)
        self.pool = torch.empty(n_layer, 2, n_kv_head, 0, head_dim, dtype=dtype, device=device)
        self._child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        self._parent: list[int] = []
        self._token: list[int] = []
        self._n_children: list[int] = []
        self._free: list[int] = []
        self._lru: OrderedDict[int, None] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        """Tokens held."""
        return len(self._lru)

    @property
    def nbytes(self) -> int:
        return self.pool.numel() * self.pool.element_size()

    def match(self, tokens: list[int]) -> list[int]:
        """Pool slots of the longest cached prefix of `tokens` (marked as recently used)."""
        path, node = [], ROOT
        for t in tokens:
            node = self._child.get((node, t))
            if node is None:
                break
            path.append(node)
        self._touch(path)
        return path

    def gather(self, slots: list[int]) -> torch.Tensor:
        """[n_layer, 2, n_kv_head, len(slots), head_dim]."""
        return self.pool.index_select(3, torch.tensor(slots, device=self._device))

    def insert(self, tokens: list[int], kv: torch.Tensor) -> int:
        """Cache the prefix `tokens` whose KV is `kv` [n_layer, 2, n_kv_head, len(tokens), head_dim].

        Returns how many tokens were newly stored (fewer than missing when the bound stops it).
        """
        if self.capacity == 0:
            return 0
        path, node = [], ROOT
        i = 0
        while i < len(tokens):
            nxt = self._child.get((node, tokens[i]))
            if nxt is None:
                break
            path.append(nxt)
            node = nxt
            i += 1
        self._touch(path)
        new_slots: list[int] = []
        start = i
        while i < len(tokens):
            slot = self._allocate(protect=node)
            if slot is None:
                break
            self._child[(node, tokens[i])] = slot
            self._parent[slot], self._token[slot], self._n_children[slot] = node, tokens[i], 0
            if node != ROOT:
                self._n_children[node] += 1
            self._lru[slot] = None
            new_slots.append(slot)
            path.append(slot)
            node = slot
            i += 1
        if new_slots:
            idx = torch.tensor(new_slots, device=self._device)
            self.pool.index_copy_(3, idx, kv[:, :, :, start:start + len(new_slots)].to(self._dtype))
            self._touch(path)
        return len(new_slots)

    def clear(self) -> None:
        self.__init__(self._shape[0], self._shape[2], self._shape[3], self._dtype, self._device,
                      self.capacity * self.token_bytes)

    def _touch(self, path: list[int]) -> None:
        for node in reversed(path):
            self._lru.move_to_end(node)

    def _allocate(self, protect: int) -> int | None:
        if self._free:
            return self._free.pop()
        n = self.pool.shape[3]
        if n < self.capacity:
            grow = min(self.capacity, max(256, 2 * n)) - n
            extra = torch.empty(*self._shape[:3], grow, self._shape[3], dtype=self._dtype,
                                device=self._device)
            self.pool = torch.cat([self.pool, extra], dim=3)
            self._parent += [ROOT] * grow
            self._token += [0] * grow
            self._n_children += [0] * grow
            self._free = list(range(n + grow - 1, n - 1, -1))
            return self._free.pop()
        oldest = next(iter(self._lru), None)
        if oldest is None or oldest == protect or self._n_children[oldest] > 0:
            return None  # only the path being inserted is left
        self._lru.popitem(last=False)
        parent = self._parent[oldest]
        del self._child[(parent, self._token[oldest])]
        if parent != ROOT:
            self._n_children[parent] -= 1
        self.evictions += 1
        return oldest
