"""passes/prune."""
