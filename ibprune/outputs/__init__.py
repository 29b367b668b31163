"""What a run hands back: ONNX and its parity, benchmarks, robustness, the report, the channel picture, the
compressed-model file. Imports core, never pipeline."""
