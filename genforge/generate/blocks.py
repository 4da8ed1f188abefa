"""Paged KV-cache bookkeeping: which cache blocks each sequence owns, and the prefix cache.

The KV cache is a pool of fixed-size blocks (`block_size` token positions each). A sequence owns a
list of blocks, its block table; position p of the sequence lives in slot
`table[p // block_size] * block_size + p % block_size` of the pool. Memory is therefore bounded by
the pool and shared by whoever needs it at the moment, instead of each request reserving a whole
context up front.

Prefix cache (automatic, as in vLLM): when a block is full its content is named by a hash of the
token ids it holds *and everything before it* (the parent block's hash). A new sequence whose prompt
starts with the same tokens takes those blocks instead of recomputing them. A block is shared by
counting references; when nobody uses a named block any more it stays in the cache, evictable in
least-recently-used order, until its memory is needed for something else.

A prompt that shares only part of the block after its last whole shared block (a system prompt of 27
tokens in blocks of 16) takes that part too: the matching positions of a cached block with the same
parent are copied into a new block of its own (`copies`, which the engine carries out before the
step), so a new request recomputes only from where it differs, as llama.cpp's slots do.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field


def _chain(parent: bytes, tokens: list[int]) -> bytes:
    """A collision-resistant name for a block: sha256 of its parent's name and its token ids."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


@dataclass
class BlockTable:
    """The blocks one sequence holds, and how many of them carry a published prefix hash."""

    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # hashes[i] names blocks[i]; full blocks only
    # Starts the hash chain: the same tokens under another LoRA adapter have other keys and values.
    salt: bytes = b""


class BlockPool:
    def __init__(self, n_blocks: int, block_size: int, prefix_cache: bool = True):
        if n_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one position")
        self.n_blocks, self.block_size, self.prefix_cache = n_blocks, block_size, prefix_cache
        # Free blocks are handed out lowest first, so the pool's touched memory stays compact.
        self._free = list(range(n_blocks - 1, -1, -1))
        self._refs = [0] * n_blocks
        self._hash_of: dict[int, bytes] = {}  # block -> hash, for blocks in the prefix cache
        self._block_of: dict[bytes, int] = {}  # hash -> block
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; LRU first
        self._parent_of: dict[int, bytes] = {}  # cached block -> the hash (or salt) before it
        self._tokens_of: dict[int, tuple[int, ...]] = {}  # cached block -> the tokens it holds
        self._children: dict[bytes, set[int]] = {}  # hash (or salt) -> cached blocks after it
        # (from block, to block, positions): keys and values the engine copies before the step
        self.copies: list[tuple[int, int, int]] = []
        self.hits = self.queries = 0  # prefix-cache statistics, in prompt tokens admitted

    # -- capacity ---------------------------------------------------------------------------

    @property
    def n_available(self) -> int:
        """Blocks that can be handed out now (free, or cached but unreferenced)."""
        return len(self._free) + len(self._evictable)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    # -- prefix cache ----------------------------------------------------------------------

    def block_hashes(self, tokens: list[int], salt: bytes = b"") -> list[bytes]:
        """Chained hashes of the full blocks of `tokens` (after `salt`)."""
        bs, out, parent = self.block_size, [], salt
        for i in range(len(tokens) // bs):
            parent = _chain(parent, tokens[i * bs : (i + 1) * bs])
            out.append(parent)
        return out

    def match_prefix(
        self, table: BlockTable, tokens: list[int], limit: int, partial: int = 0
    ) -> int:
        """Give `table` the cached blocks that start `tokens` (at most `limit` tokens' worth), and
        a copy of the start of the next one, up to `partial` tokens, where a cached block shares it.

        Returns the number of tokens whose keys and values are (or, copied, will be) in place.
        """
        if not self.prefix_cache:
            return 0
        hashes = self.block_hashes(tokens[:limit], table.salt)
        for h in hashes:
            block = self._block_of.get(h)
            if block is None:
                break
            self._take(block)
            table.blocks.append(block)
            table.hashes.append(h)
        n = len(table.blocks) * self.block_size
        cap = min(limit, partial) - n
        if cap > 0:
            n += self._match_partial(table, tokens[n : n + self.block_size], cap)
        return n

    def _match_partial(self, table: BlockTable, want: list[int], cap: int) -> int:
        """Start a new block of `table` with the longest run of `want` a cached block after the
        same parent begins with, where the prompt goes on differently (at most `cap` positions);
        the positions to copy go to `copies`. Returns their number."""
        parent = table.hashes[-1] if table.hashes else table.salt
        source, best = None, 0
        for block in self._children.get(parent, ()):
            n = 0
            for a, b in zip(self._tokens_of[block], want, strict=False):  # want may be shorter
                if a != b:
                    break
                n += 1
            if n > best:
                source, best = block, n
        if source is None or best == len(want):
            # All of it cached: a repeated prompt, computed from the block's start as it was the
            # first time (rows attended one way cold and another warm can differ in the last bits)
            return 0
        best = min(best, cap)
        self._take(source)  # held until the engine has copied it
        if self.n_available == 0:
            self._drop(source)
            return 0
        target = self._allocate()
        table.blocks.append(target)
        self.copies.append((source, target, best))
        return best

    def copying(self, table: BlockTable) -> bool:
        """Whether a copy into one of `table`'s blocks is pending."""
        return any(target in table.blocks for _, target, _ in self.copies)

    def take_copies(self) -> list[tuple[int, int, int]]:
        """The pending copies, for the engine to carry out before the step; each source block is
        held until `copied` says it is done."""
        copies, self.copies = self.copies, []
        return copies

    def copied(self, copies: list[tuple[int, int, int]]) -> None:
        for source, _, _ in copies:
            self._drop(source)

    def publish(self, table: BlockTable, tokens: list[int], n_computed: int) -> None:
        """Name the blocks of `table` that are full and computed, so later sequences can reuse them."""
        if not self.fills_block(table, n_computed):
            return
        n_full = min(n_computed, len(tokens)) // self.block_size
        parent = table.hashes[-1] if table.hashes else table.salt
        bs = self.block_size
        for i in range(len(table.hashes), n_full):
            parent = _chain(parent, tokens[i * bs : (i + 1) * bs])
            table.hashes.append(parent)
            block = table.blocks[i]
            if parent not in self._block_of and block not in self._hash_of:
                self._block_of[parent] = block
                self._hash_of[block] = parent
                before = table.hashes[-2] if len(table.hashes) > 1 else table.salt
                self._parent_of[block] = before
                self._tokens_of[block] = tuple(tokens[i * bs : (i + 1) * bs])
                self._children.setdefault(before, set()).add(block)

    def fills_block(self, table: BlockTable, n_computed: int) -> bool:
        """Whether `n_computed` positions complete a block `publish` has not named yet."""
        return self.prefix_cache and n_computed // self.block_size > len(table.hashes)

    # -- allocation ------------------------------------------------------------------------

    def grow(self, table: BlockTable, n_tokens: int) -> bool:
        """Make `table` hold at least `n_tokens` positions; False (and no change) if memory is short."""
        need = self.blocks_for(n_tokens) - len(table.blocks)
        if need <= 0:
            return True
        if need > self.n_available:
            return False
        for _ in range(need):
            table.blocks.append(self._allocate())
        return True

    def share(self, table: BlockTable, blocks: list[int]) -> None:
        """Append `blocks` (held by another table) to `table`, which then holds them too."""
        for block in blocks:
            self._take(block)
            table.blocks.append(block)

    def release(self, table: BlockTable) -> None:
        """Give back every block of `table`; named blocks stay cached until their memory is needed."""
        # A copy into a block given back is not needed any more.
        if self.copies and (cancel := [c for c in self.copies if c[1] in table.blocks]):
            self.copies = [c for c in self.copies if c not in cancel]
            self.copied(cancel)
        # Later blocks are evicted first: a shared prefix outlives the tails that extend it.
        for block in reversed(table.blocks):
            self._drop(block)
        table.blocks.clear()
        table.hashes.clear()

    def _drop(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def _take(self, block: int) -> None:
        if self._refs[block] == 0:
            self._evictable.pop(block, None)
        self._refs[block] += 1

    def _allocate(self) -> int:
        if self._free:
            block = self._free.pop()
        else:  # evict the least recently used cached block
            block, _ = self._evictable.popitem(last=False)
            self._forget(block)
        self._refs[block] = 1
        return block

    def _forget(self, block: int) -> None:
        del self._block_of[self._hash_of.pop(block)]
        parent = self._parent_of.pop(block)
        del self._tokens_of[block]
        children = self._children[parent]
        children.discard(block)
        if not children:
            del self._children[parent]

    def reset_prefix_cache(self) -> None:
        for block in list(self._evictable):
            self._forget(block)
            self._free.append(block)
        self._evictable.clear()
