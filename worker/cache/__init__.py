"""Redis verdict cache, its circuit breaker, and the optional near-duplicate (pHash) index.

Never imports kafka or :mod:`worker.runtime`.
"""
