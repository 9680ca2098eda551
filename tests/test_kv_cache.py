"""The prefix store on its own: storage dtypes and eviction by what the next step reuses.

(Lookup, replacement, LRU and shared-buffer accounting are tested in test_transformers_backend.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icm_engine.backends import kv_cache
from icm_engine.backends.kv_cache import KV_DTYPES, PrefixKVStore, pack, unpack
from icm_engine.core import config


def layers(n: int, fill: float = 0.0, channels: int = 2):
    """One layer of keys/values for n tokens, 1 head, float32 (2 channels: 16 bytes a token)."""
    return ((torch.full((1, 1, n, channels), fill), torch.full((1, 1, n, channels), fill)),)


def test_the_config_offers_the_dtypes_the_store_knows():
    assert config.KV_DTYPES == kv_cache.KV_DTYPES


@pytest.mark.parametrize("kv_dtype,relative_error,bytes_per_element", [
    ("compute", 0.0, 4), ("bfloat16", 2**-8, 2), ("int8", 1 / 127, 1)])
def test_storage_dtypes_round_trip_within_their_precision(kv_dtype, relative_error, bytes_per_element):
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(1, 2, 50, 64, generator=generator) * torch.linspace(0.1, 10, 64)  # uneven channels
    states[:, :, 7] = 0  # an all-zero token must survive int8 (scale 1, not 0)
    packed = pack(states, kv_dtype)
    assert packed[0].element_size() == bytes_per_element
    back = unpack(packed, 30, torch.float32)
    assert back.dtype == torch.float32 and back.shape == (1, 2, 30, 64)
    # per token: the error is within the dtype's step relative to that token's largest value
    largest = states[:, :, :30].abs().amax(dim=-1, keepdim=True)
    assert ((back - states[:, :, :30]).abs() <= relative_error * largest + 1e-12).all()
    assert (back[:, :, 7] == 0).all()
    if kv_dtype == "compute":  # stored as computed: a view, no copy
        assert back.data_ptr() == states.data_ptr()


def test_int8_prefixes_do_not_depend_on_what_followed_them():
    """Per-token scales: a prefix unpacks to the same numbers from any entry that holds it."""
    short = torch.randn(1, 1, 10, 8)
    longer = torch.cat([short, 100 * torch.randn(1, 1, 5, 8)], dim=2)  # large values appended
    assert torch.equal(unpack(pack(short, "int8"), 10, torch.float32), unpack(pack(longer, "int8"), 10, torch.float32))


def test_smaller_dtypes_hold_more_under_one_budget():
    # 10 tokens x 8 channels x keys and values: 640 bytes in float32, 320 in bfloat16, 160 in int8
    # plus 80 of per-token float32 scales
    for kv_dtype, entries in (("compute", 2), ("bfloat16", 4), ("int8", 5)):
        store = PrefixKVStore(budget_bytes=2 * 640 + 8, kv_dtype=kv_dtype)
        for first in range(8):
            store.put(np.array([first] * 10), layers(10, fill=1.0, channels=8))
        assert len(store) == entries, kv_dtype
        past, n = store.longest_prefix(np.array([7] * 12))
        assert n == 10 and past[0][0].dtype == torch.float32 and (past[0][0] == 1.0).all()
    with pytest.raises(ValueError, match="kv_dtype"):
        PrefixKVStore(100, kv_dtype="float16")


def test_the_entry_covering_the_held_order_is_evicted_last():
    """A search's next prompts all start with a prefix of its current demonstration order: the
    entry that covers most of that order stays while least recently used entries go."""
    order = np.arange(1, 21)
    store = PrefixKVStore(budget_bytes=16 * 12 * 2)  # two 12-token entries
    store.hold(order)
    covers_order = np.concatenate([order[:10], [99, 99]])  # 10 tokens of the order, then its own
    store.put(covers_order, layers(12))
    store.put(np.concatenate([order[:2], np.arange(50, 60)]), layers(12))  # shares 2 tokens of the order
    store.longest_prefix(np.concatenate([order[:2], np.arange(50, 60)]))  # ...and was used last
    store.put(np.arange(70, 82), layers(12))  # over budget: one must go
    assert store.evictions == 1
    assert store.match_length(order) == 10  # LRU would have evicted it: it was used first
    assert np.array_equal(store.held_entry(), covers_order)
    # an entry covering more of the order takes over, and the old one is evicted like any other
    better = np.concatenate([order[:11], [98]])
    store.put(better, layers(12))
    assert np.array_equal(store.held_entry(), better)
    store.put(np.arange(200, 212), layers(12))
    assert store.match_length(order) == 11 and store.match_length(covers_order) == 10  # via `better`
    assert not any(np.array_equal(covers_order, t) for t in _stored(store))
    # no order held: plain least recently used
    plain = PrefixKVStore(budget_bytes=16 * 12 * 2)
    plain.put(covers_order, layers(12))
    plain.put(np.arange(50, 62), layers(12))
    plain.put(np.arange(70, 82), layers(12))
    assert plain.match_length(order) == 0


def test_the_held_entry_goes_too_when_nothing_else_is_left():
    store = PrefixKVStore(budget_bytes=16 * 12)
    store.hold(np.arange(1, 21))
    store.put(np.arange(1, 13), layers(12))
    store.put(np.arange(50, 62), layers(12))  # the held one stays, so the newcomer goes
    assert store.match_length(np.arange(1, 21)) == 12 and len(store) == 1
    assert store.release(1) == 16 * 12 and len(store) == 0  # pressure takes the held one last of all


def _stored(store: PrefixKVStore):
    return [entry.tokens for entry in store._entries.values()]


def test_a_row_of_a_large_batch_buffer_is_stored_as_its_own_copy_under_a_tight_budget():
    """Rows of a batched forward view one padded buffer; where that buffer would take more than
    half the budget, the row is copied out, so a tight budget still keeps something."""
    buffer = torch.ones(8, 1, 10, 2)  # 8 rows x 10 tokens: 640 bytes, keys and values alike
    row = ((buffer[3:4, :, :6], buffer[3:4, :, :6]),)  # 6 tokens: 48 + 48 bytes of its own
    store = PrefixKVStore(budget_bytes=200)
    assert store.put(np.arange(6), row) and store.nbytes == 96
    past, n = store.longest_prefix(np.arange(6))
    assert n == 6 and past[0][0].data_ptr() != buffer.data_ptr() and (past[0][0] == 1).all()
    roomy = PrefixKVStore(budget_bytes=10_000)  # the buffer fits easily: the row stays a view
    roomy.put(np.arange(6), row)
    assert roomy.nbytes == 640
