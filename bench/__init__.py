"""continual-moe-bench harness: it knows nothing about any single method or task."""
