"""Reports built from result records only (so they can be rebuilt and runs merged)."""
