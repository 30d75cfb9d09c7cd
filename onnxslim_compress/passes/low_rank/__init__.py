"""passes/low_rank."""
