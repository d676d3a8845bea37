"""One batch of records to one outcome each: the worker's logic without Kafka.

Driven by the Kafka runtime and by the offline scorer alike. Never imports kafka
or :mod:`worker.runtime`.
"""
