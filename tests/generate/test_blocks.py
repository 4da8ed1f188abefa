"""The paged KV block pool: allocation, reference counts, the prefix cache and its LRU eviction."""

import pytest

from genforge.generate.blocks import BlockPool, BlockTable


def computed(pool, tokens):
    """A table holding `tokens`, computed and published, as a finished prefill leaves it."""
    table = BlockTable()
    assert pool.grow(table, len(tokens))
    pool.publish(table, tokens, len(tokens))
    return table


def matched(pool, tokens, limit=None):
    table = BlockTable()
    n = pool.match_prefix(table, tokens, len(tokens) if limit is None else limit)
    return n, table


def test_grow_allocates_whole_blocks_and_refuses_without_side_effects_when_short():
    pool = BlockPool(n_blocks=4, block_size=4, prefix_cache=False)
    a, b = BlockTable(), BlockTable()
    assert pool.grow(a, 5) and len(a.blocks) == 2
    assert pool.grow(a, 8) and len(a.blocks) == 2  # already holds 8 positions
    assert pool.n_available == 2
    assert not pool.grow(b, 12)  # needs 3 of the 2 left
    assert b.blocks == [] and pool.n_available == 2
    assert pool.grow(b, 8)
    assert not pool.grow(a, 9)
    assert len(a.blocks) == 2 and pool.n_available == 0
    assert len(set(a.blocks + b.blocks)) == 4  # no block handed out twice


def test_release_returns_every_block():
    pool = BlockPool(n_blocks=4, block_size=4)
    a = BlockTable()
    assert pool.grow(a, 16)
    pool.release(a)
    assert a.blocks == [] and a.hashes == [] and pool.n_available == 4
    assert pool.grow(a, 16)  # and they can be handed out again


def test_a_published_chain_is_reused_block_for_block():
    pool = BlockPool(n_blocks=8, block_size=4)
    tokens = list(range(100, 112))
    a = computed(pool, tokens)
    n, b = matched(pool, tokens + [1, 2, 3])
    assert n == 12 and b.blocks == a.blocks


def test_a_block_shared_in_part_is_copied_into_a_block_of_its_own():
    pool = BlockPool(n_blocks=8, block_size=4)
    a = computed(pool, [1, 2, 3, 4, 5, 6, 7, 8])
    b = BlockTable()
    assert pool.match_prefix(b, [1, 2, 3, 4, 5, 6, 9, 9, 9], 8) == 4  # whole blocks only
    pool.release(b)
    assert pool.match_prefix(b, [1, 2, 3, 4, 5, 6, 9, 9, 9], 8, partial=8) == 6
    assert b.blocks[0] == a.blocks[0] and b.blocks[1] not in a.blocks
    copies = pool.take_copies()
    assert copies == [(a.blocks[1], b.blocks[1], 2)] and pool.copies == []
    pool.release(a)
    assert pool.n_available == 8 - 3  # the source is held until copied
    pool.copied(copies)
    pool.release(b)
    assert pool.n_available == 8
    # a repeated prompt, all of it cached up to the limit, is not copied: computed as it was
    table = BlockTable()
    assert pool.match_prefix(table, [1, 2, 3, 4, 5, 6, 7, 8], 7, partial=6) == 4
    pool.release(table)
    # the copy is limited by `partial`
    assert pool.match_prefix(table, [1, 2, 3, 4, 5, 6, 9, 9], 8, partial=5) == 5


def test_a_copy_into_a_block_given_back_is_dropped_with_its_source():
    pool = BlockPool(n_blocks=4, block_size=4)
    a = computed(pool, [1, 2, 3, 4])
    pool.release(a)
    b = BlockTable()
    assert pool.match_prefix(b, [1, 2, 7, 7], 3, partial=3) == 2
    pool.release(b)  # e.g. no memory for the rest of its prompt yet
    assert pool.copies == [] and pool.n_available == 4
    assert matched(pool, [1, 2, 3, 4, 5])[0] == 4  # the source is still cached


def test_only_full_computed_blocks_are_published():
    pool = BlockPool(n_blocks=8, block_size=4)
    tokens = list(range(10))
    table = BlockTable()
    assert pool.grow(table, len(tokens))
    pool.publish(table, tokens, 3)  # the first block is not computed yet
    assert matched(pool, tokens)[0] == 0
    pool.publish(table, tokens, 10)  # two full blocks and a partial third
    assert matched(pool, tokens + [0, 0])[0] == 8


def test_the_chain_hash_covers_everything_before_a_block():
    pool = BlockPool(n_blocks=8, block_size=4)
    computed(pool, [1, 2, 3, 4, 5, 6, 7, 8])
    # The second block's content after a different first block is different keys and values.
    assert matched(pool, [9, 9, 9, 9, 5, 6, 7, 8])[0] == 0
    assert matched(pool, [1, 2, 3, 4, 9, 9, 9, 9])[0] == 4


def test_match_stops_at_the_limit():
    pool = BlockPool(n_blocks=8, block_size=4)
    tokens = list(range(8))
    computed(pool, tokens)
    assert matched(pool, tokens, limit=7)[0] == 4
    assert matched(pool, tokens, limit=3)[0] == 0


def test_a_shared_block_is_not_freed_while_someone_holds_it():
    pool = BlockPool(n_blocks=4, block_size=4)
    tokens = list(range(8))
    a = computed(pool, tokens)
    n, b = matched(pool, tokens)
    assert n == 8 and pool.n_available == 2
    pool.release(a)
    assert pool.n_available == 2  # b still holds both
    c = BlockTable()
    assert pool.grow(c, 8) and not set(c.blocks) & set(b.blocks)
    assert not pool.grow(c, 9)
    pool.release(b)
    assert pool.n_available == 2
    assert matched(pool, tokens)[0] == 8  # unreferenced, but still cached


def test_eviction_takes_the_least_recently_used_cached_blocks_and_forgets_them():
    pool = BlockPool(n_blocks=4, block_size=2)
    first, second = [1, 2, 3, 4], [5, 6, 7, 8]
    a = computed(pool, first)
    b = computed(pool, second)
    first_blocks = list(a.blocks)
    pool.release(a)
    pool.release(b)
    assert pool.n_available == 4
    fresh = BlockTable()
    assert pool.grow(fresh, 4)  # no free block left: two cached ones go
    assert sorted(fresh.blocks) == sorted(first_blocks)
    assert matched(pool, first)[0] == 0  # their names went with them
    n, again = matched(pool, second)
    assert n == 4
    pool.release(again)


def test_a_match_makes_a_chain_recently_used():
    pool = BlockPool(n_blocks=4, block_size=2)
    first, second = [1, 2, 3, 4], [5, 6, 7, 8]
    a, b = computed(pool, first), computed(pool, second)
    second_blocks = list(b.blocks)
    pool.release(a)
    pool.release(b)
    _, touched = matched(pool, first)
    pool.release(touched)
    fresh = BlockTable()
    assert pool.grow(fresh, 4)
    assert sorted(fresh.blocks) == sorted(second_blocks)
    assert matched(pool, first)[0] == 4


def test_a_chain_loses_its_tail_before_its_head():
    pool = BlockPool(n_blocks=2, block_size=2)
    tokens = [1, 2, 3, 4]
    pool.release(computed(pool, tokens))
    fresh = BlockTable()
    assert pool.grow(fresh, 1)
    n, table = matched(pool, tokens)
    assert n == 2  # the shared start outlives the tail that extended it


def test_reset_prefix_cache_forgets_unreferenced_blocks():
    pool = BlockPool(n_blocks=4, block_size=2)
    tokens = [1, 2, 3, 4]
    pool.release(computed(pool, tokens))
    pool.reset_prefix_cache()
    assert pool.n_available == 4 and matched(pool, tokens)[0] == 0


def test_without_prefix_cache_nothing_is_ever_matched():
    pool = BlockPool(n_blocks=4, block_size=2, prefix_cache=False)
    tokens = [1, 2, 3, 4]
    a = computed(pool, tokens)
    assert matched(pool, tokens)[0] == 0
    pool.release(a)
    assert matched(pool, tokens)[0] == 0
    assert pool.n_available == 4 and pool.hits == pool.queries == 0


def test_an_empty_pool_is_refused():
    with pytest.raises(ValueError):
        BlockPool(n_blocks=0, block_size=16)
    with pytest.raises(ValueError):
        BlockPool(n_blocks=4, block_size=0)
