"""Offset tracking: only the contiguous done prefix is committed, and a revoke retires its generation."""

from __future__ import annotations

from kafka import TopicPartition

from worker.runtime.offsets import OffsetTracker

TP = TopicPartition("t", 0)


def test_only_the_contiguous_done_prefix_is_committable_even_across_offset_gaps() -> None:
    tr = OffsetTracker()
    tr.assign({TP})
    gen = tr.added(TP, [5, 6, 7, 9])  # 8 is a transaction marker the consumer never returns
    assert gen is not None and tr.in_flight == 4
    assert tr.complete(TP, gen, [6, 7]) and tr.to_commit() == {}
    tr.complete(TP, gen, [5])
    assert tr.to_commit()[TP].offset == 8 and tr.in_flight == 1
    tr.committed(tr.to_commit())
    assert tr.to_commit() == {}
    tr.complete(TP, gen, [9])
    assert tr.to_commit()[TP].offset == 10 and tr.in_flight == 0


def test_revoke_retires_the_generation_and_says_where_to_restart() -> None:
    tr = OffsetTracker()
    tr.assign({TP})
    gen = tr.added(TP, [0, 1, 2, 3])
    assert gen is not None
    tr.complete(TP, gen, [0, 1])
    final, restart = tr.revoke({TP})
    assert final[TP].offset == 2 and restart == {TP: 2} and tr.in_flight == 0
    assert not tr.complete(TP, gen, [2, 3]), "work from a revoked generation must be refused"
    tr.assign({TP})
    new_gen = tr.generation(TP)
    assert new_gen is not None and new_gen != gen and not tr.is_current(TP, gen)
    assert tr.added(TopicPartition("t", 9), [0]) is None  # never assigned: never handed over
