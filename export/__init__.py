"""Checkpoint to model bundle: ONNX, parity with PyTorch, int8, metrics (the only bridge
between training/ and server/)."""
