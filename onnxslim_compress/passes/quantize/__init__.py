"""passes/quantize."""
