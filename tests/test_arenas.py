"""Batches handed from DataLoader workers through reusable shared-memory arenas."""

from __future__ import annotations

import gc
import io
import pickle
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler

import torch

from pipeline.arenas import ArenaPool, LocalPool


@dataclass
class Pair:
    x: torch.Tensor
    y: torch.Tensor
    note: str


def _handover(shipped) -> Pair:
    """What the receiving process gets: the batch pickled as a worker's queue does, then unpickled."""
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(shipped)
    return pickle.loads(buffer.getvalue())


def _fill(pool: ArenaPool | LocalPool, value: float) -> Pair:
    out = pool.carve({'x': ((3, 4), torch.float32), 'y': ((5,), torch.long)})
    out['x'].fill_(value)
    out['y'].copy_(torch.arange(5) * int(value))
    return Pair(out['x'], out['y'], note=f'batch {value}')


def test_a_held_batch_keeps_its_arena_and_a_released_one_is_reused(tmp_path):
    pool = ArenaPool()
    first = _handover(pool.ship(_fill(pool, 1.0)))
    assert torch.equal(first.x, torch.ones(3, 4)) and torch.equal(first.y, torch.arange(5))
    assert first.note == 'batch 1.0'
    second = _handover(pool.ship(_fill(pool, 2.0)))  # the first is still held: a second arena
    assert len(pool.arenas) == 2
    assert torch.equal(first.x, torch.ones(3, 4)), 'a held batch was overwritten'
    torch.save(first.__dict__, tmp_path / 'batch.pt')  # views of one arena save like any tensors
    assert torch.equal(torch.load(tmp_path / 'batch.pt')['y'], torch.arange(5))
    held_y = first.y
    del first
    gc.collect()
    _handover(pool.ship(_fill(pool, 3.0)))  # first.y is still alive: its arena stays busy
    assert len(pool.arenas) == 3 and torch.equal(held_y, torch.arange(5))
    del held_y, second
    gc.collect()
    reused = _handover(pool.ship(_fill(pool, 4.0)))
    assert len(pool.arenas) == 3 and torch.equal(reused.x, torch.full((3, 4), 4.0))


def test_a_tensor_not_carved_from_the_arena_is_pickled_as_usual():
    pool = ArenaPool()
    batch = _fill(pool, 1.0)
    batch.y = torch.tensor([7, 8])  # replaced after carving
    got = _handover(pool.ship(batch))
    assert torch.equal(got.y, torch.tensor([7, 8])) and torch.equal(got.x, torch.ones(3, 4))


def test_in_process_batch_memory_is_reused_only_once_nothing_views_it():
    pool = LocalPool()
    first = _fill(pool, 1.0)
    kept = first.x[1:]  # a view outlives the batch
    first_ptr = first.x.data_ptr()
    del first
    gc.collect()
    second = _fill(pool, 2.0)
    assert second.x.data_ptr() != first_ptr and len(pool.buffers) == 2
    assert torch.equal(kept, torch.ones(2, 4))  # not overwritten by the second batch
    del kept
    gc.collect()
    third = _fill(pool, 3.0)
    assert third.x.data_ptr() == first_ptr and len(pool.buffers) == 2  # the first buffer, free again
    assert torch.equal(second.x, torch.full((3, 4), 2.0)) and torch.equal(third.y, torch.arange(5) * 3)


def test_in_process_buffers_freed_beyond_the_kept_few_are_let_go():
    pool = LocalPool(keep=2)
    held = [_fill(pool, float(i)) for i in range(6)]  # six batches held at once: six buffers
    assert len(pool.buffers) == 6
    del held
    gc.collect()
    _fill(pool, 7.0)
    assert len(pool.buffers) == 3  # the one carved now and two spare
