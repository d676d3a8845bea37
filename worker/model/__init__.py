"""The model: bundle verification, ONNX Runtime sessions, the threshold policy, rollout (hot swap, shadow).

Never imports kafka or :mod:`worker.runtime`.
"""
