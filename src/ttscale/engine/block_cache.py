"""Automatic prefix caching on the paged pool's own blocks (vLLM's design).

A block holding the KV of known tokens is registered under a chained key: a hash of its
parent's key and its tokens, so a key names a whole prefix. Full blocks chain; the partly
filled last block of a finished sequence is registered as a leaf. A new prompt takes a
reference on its longest run of registered full blocks (no copy, no recompute) and copies
the one registered block after them that shares most of its next tokens (a partial hit).
A registered block is never written again (`BlockPool.copy_on_write` copies it first).

When no sequence refers to a registered block it stays in the pool, unreferenced, in
least-recently-used order (`lru`): the pool counts it as free and evicts it (the index forgets
it) when it has no free block to hand out, before it grows. At most `max_blocks` blocks are
registered (from `prefix_cache_bytes`; 0: prefix caching off); registering past it evicts the
least recently used unreferenced one, or registers nothing when every registered block is in use.
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from hashlib import blake2b

ROOT = b""  # the key of the empty prefix


def chain(parent: bytes, tokens) -> bytes:
    """The key of a block holding `tokens` after the prefix keyed `parent`."""
    return blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


class BlockCache:
    """The index of registered blocks and the LRU of the unreferenced ones.

    block: positions per block; block_bytes: a block's bytes in the pool (every plane);
    token_bytes: KV bytes of one position; max_bytes: the bound on registered blocks.
    """

    def __init__(self, block: int, block_bytes: int, token_bytes: int, max_bytes: int):
        self.block, self.block_bytes, self.token_bytes = block, block_bytes, token_bytes
        self.capacity = max(0, int(max_bytes) // token_bytes)  # the bound in positions
        self.max_blocks = max(0, int(max_bytes) // block_bytes)
        self.pool = None  # the BlockPool whose blocks are indexed (`attach`)
        self.evictions = 0
        self.reset()

    def reset(self) -> None:
        """Forget every block (the pool is gone, or `clear` returned them)."""
        self._block_of: dict[bytes, int] = {}  # key -> block
        self._key: dict[int, bytes] = {}  # block -> key
        self._parent: dict[int, bytes] = {}  # block -> its parent's key
        self._tokens: dict[int, tuple[int, ...]] = {}  # block -> the tokens it holds
        self._children: dict[bytes, set[int]] = {}  # key -> blocks registered after it
        self.lru: OrderedDict[int, None] = OrderedDict()  # unreferenced blocks, oldest first
        self.n_tokens = 0

    def attach(self, pool) -> None:
        self.reset()
        self.pool = pool

    def clear(self) -> None:
        """Forget every block; the unreferenced ones become plain free blocks of the pool."""
        lru = list(self.lru)
        self.reset()
        if self.pool is not None:
            self.pool.put_free(lru)

    def __len__(self) -> int:
        """Positions held by registered blocks."""
        return self.n_tokens

    def __contains__(self, b: int) -> bool:
        return b in self._key

    @property
    def n_blocks(self) -> int:
        return len(self._key)

    @property
    def nbytes(self) -> int:
        return len(self._key) * self.block_bytes

    def match(self, tokens: list[int]) -> tuple[list[int], int | None, int]:
        """(full, part, m): registered full blocks holding tokens[:len(full) * block], then the
        registered block `part` whose first m > 0 tokens are the next ones (None, 0: none).
        Marks them recently used."""
        bs, key, full = self.block, ROOT, []
        for i in range(len(tokens) // bs):
            k = chain(key, tokens[i * bs:(i + 1) * bs])
            b = self._block_of.get(k)
            if b is None:
                break
            full.append(b)
            key = k
        rest = tokens[len(full) * bs:(len(full) + 1) * bs]
        part, m = None, 0
        for b in self._children.get(key, ()) if rest else ():
            n = _common(self._tokens[b], rest)
            if n > m:
                part, m = b, n
        self.touch(full + ([part] if part is not None else []))
        return full, part, m

    def touch(self, blocks: list[int]) -> None:
        """Mark `blocks` (a path from the root) recently used, a parent more than its child."""
        for b in reversed(blocks):
            if b in self.lru:
                self.lru.move_to_end(b)

    def register(self, tokens: list[int], blocks: list[int]) -> None:
        """Index blocks[i] as holding tokens[i * block:(i + 1) * block] (the last may be partial).
        A prefix some other block already holds keeps that block."""
        if not self.max_blocks:
            return
        bs, key, path = self.block, ROOT, []
        for i in range(-(-len(tokens) // bs)):
            part = tuple(tokens[i * bs:(i + 1) * bs])
            k = chain(key, part)
            b = self._block_of.get(k)
            if b is None:
                b = blocks[i]
                if b in self._key or (len(part) < bs and self._covered(key, part)):
                    break
                if len(self._key) >= self.max_blocks and not self._make_room(path):
                    break
                self._add(b, k, key, part)
            path.append(b)
            key = k
        self.touch(path)

    def evict(self) -> int:
        """The least recently used unreferenced block, forgotten (the pool hands it out)."""
        b, _ = self.lru.popitem(last=False)
        self._drop(b)
        self.evictions += 1
        return b

    def _make_room(self, path: list[int]) -> bool:
        self.touch(path)  # the prefix being registered goes last
        if not self.lru or next(iter(self.lru)) in path:
            return False
        self.pool.put_free([self.evict()])
        return True

    def _covered(self, key: bytes, part: tuple[int, ...]) -> bool:
        """Whether a block registered after `key` starts with `part` (a partial hit on it
        would serve as well)."""
        return any(_common(self._tokens[c], part) == len(part) for c in self._children.get(key, ()))

    def _add(self, b: int, k: bytes, parent: bytes, part: tuple[int, ...]) -> None:
        self._block_of[k], self._key[b], self._parent[b], self._tokens[b] = b, k, parent, part
        self._children.setdefault(parent, set()).add(b)
        self.n_tokens += len(part)

    def _drop(self, b: int) -> None:
        k, parent = self._key.pop(b), self._parent.pop(b)
        del self._block_of[k]
        self.n_tokens -= len(self._tokens.pop(b))
        kids = self._children[parent]
        kids.discard(b)
        if not kids:
            del self._children[parent]


def _common(a, b) -> int:
    """Length of the common prefix of token sequences a and b."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
