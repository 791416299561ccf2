"""onnxruntime sessions, execution-provider choice, session cache, input validation, batching."""
