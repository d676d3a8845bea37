"""From a record to pixels: wire formats, fetching by URI, decoding under limits, preprocessing.

Never imports kafka or :mod:`worker.runtime`.
"""
