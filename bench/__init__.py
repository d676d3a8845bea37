"""aigis benchmarks: each comparison side by side, in one process run, on one machine.

``python -m bench`` runs them (``--only NAME`` for one, ``--quick`` for a short
validation run) and writes one JSON file per benchmark plus a markdown summary;
``python -m bench.report --readme`` renders the README "Performance" section and
the plot from those JSON files. Speed is measured here and only here: no test
asserts a timing.

This package imports torch (the PyTorch baselines), so it lives outside the
torch-free ``worker`` package; it drives the worker the way an operator does,
through ``python -m worker`` and ``AIGIS_*`` environment variables.
"""
