"""Where the arithmetic runs: the device (`device`), the precision and its autocast (`precision`),
batched inference (`inference`) and, for a frozen network's CPU jobs, the engine that runs it
(`engine`: PyTorch eager or ONNX Runtime)."""
