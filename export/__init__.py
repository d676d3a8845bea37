"""aigis export: the PyTorch side (embeddings, detector heads, ONNX bundles, evaluation).

Imports flow export -> worker -> schemas; nothing in worker imports this package.
"""
