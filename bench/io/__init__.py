"""What a run writes: the run record (one schema, built and validated in one place) and checkpoint files."""
