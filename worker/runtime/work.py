"""The unit the runtime moves between threads: a record and the assignment it was fetched under."""

from __future__ import annotations

from dataclasses import dataclass

from kafka import TopicPartition

from worker.ingest.wire import InputRecord


@dataclass(frozen=True)
class Work:
    """A record in the pipeline, tagged with its partition's assignment generation (stale work is never emitted)."""

    record: InputRecord
    tp: TopicPartition
    generation: int
