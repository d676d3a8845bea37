"""The Kafka runtime: the only code that touches kafka-python.

Poll loop, stage threads, delivery (produce, acknowledge, retry), rebalance
listener, offset tracking, micro-batching and client factories. Everything
below it (``ingest``, ``model``, ``cache``, ``pipeline``) works on plain
records and never imports kafka.
"""
