"""aigis worker: the torch-free streaming service (Kafka, ONNX Runtime, Redis)."""
