"""Which offsets may be committed: the contiguous completed prefix per partition.

Kafka offsets within a partition are increasing but not necessarily
contiguous integers (transaction markers, compaction), so the tracker follows
the offsets it actually handed to the pipeline, in fetch order. An offset
counts as done when its outcome was acknowledged by the broker; the committable
position of a partition is one past the last offset of the longest done prefix.
Committing anything beyond that prefix could skip a record still in flight if
the process died, which is the one thing at-least-once forbids.

Each partition also has an assignment *generation*: a revoke (or a re-assign
after a rebalance) starts a new one, and work tagged with an older generation
is stale: it is neither emitted nor committed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from kafka import OffsetAndMetadata, TopicPartition


@dataclass
class _Partition:
    generation: int
    order: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    committable: int | None = None  # next offset to commit (one past the done prefix)
    committed: int | None = None


class OffsetTracker:
    """Thread-safe: the poll thread adds, the delivery stage completes, the rebalance listener revokes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._parts: dict[TopicPartition, _Partition] = {}
        self._generation = 0
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        with self.lock:
            return self._in_flight

    def assign(self, tps: set[TopicPartition]) -> None:
        """Start a fresh generation for newly assigned partitions (after revoke or first join)."""
        with self.lock:
            for tp in tps:
                if tp not in self._parts:
                    self._generation += 1
                    self._parts[tp] = _Partition(self._generation)

    def generation(self, tp: TopicPartition) -> int | None:
        with self.lock:
            p = self._parts.get(tp)
            return p.generation if p else None

    def is_current(self, tp: TopicPartition, generation: int) -> bool:
        with self.lock:
            p = self._parts.get(tp)
            return p is not None and p.generation == generation

    def added(self, tp: TopicPartition, offsets: list[int]) -> int | None:
        """Record offsets handed to the pipeline; returns the generation to tag them with (None: not assigned)."""
        with self.lock:
            p = self._parts.get(tp)
            if p is None:
                return None
            p.order.extend(offsets)
            self._in_flight += len(offsets)
            return p.generation

    def complete(self, tp: TopicPartition, generation: int, offsets: list[int]) -> bool:
        """Mark acknowledged offsets done; False (and nothing recorded) when the generation is stale."""
        with self.lock:
            p = self._parts.get(tp)
            if p is None or p.generation != generation:
                return False
            p.done.update(offsets)
            while p.order and p.order[0] in p.done:
                off = p.order.popleft()
                p.done.discard(off)
                p.committable = off + 1
                self._in_flight -= 1
            return True

    def to_commit(self, tps: set[TopicPartition] | None = None) -> dict[TopicPartition, OffsetAndMetadata]:
        """Committable positions that moved since the last commit."""
        with self.lock:
            out = {}
            for tp, p in self._parts.items():
                if (tps is None or tp in tps) and p.committable is not None and p.committable != p.committed:
                    out[tp] = OffsetAndMetadata(p.committable, "", -1)
            return out

    def committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        with self.lock:
            for tp, om in offsets.items():
                p = self._parts.get(tp)
                if p is not None:
                    p.committed = om.offset

    def revoke(self, tps: set[TopicPartition]) -> tuple[dict[TopicPartition, OffsetAndMetadata], dict[TopicPartition, int]]:
        """Forget revoked partitions.

        Returns what is still to commit for them, and for each partition that
        had records in flight the offset of the first one: where fetching must
        restart if the same partition comes straight back to this consumer
        (kafka-python keeps the fetch position of a partition that stays
        assigned across a rebalance, which would skip the dropped records).
        """
        with self.lock:
            final = self.to_commit(tps)
            restart: dict[TopicPartition, int] = {}
            for tp in tps:
                p = self._parts.pop(tp, None)
                if p is not None and p.order:
                    restart[tp] = p.order[0]
                    self._in_flight -= len(p.order)
            self._in_flight = max(0, self._in_flight)
            return final, restart

    def assigned(self) -> set[TopicPartition]:
        with self.lock:
            return set(self._parts)
