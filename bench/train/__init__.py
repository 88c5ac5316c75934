"""Training: task records to batches, the shared optimiser loop, a task's phases, and sharded (FSDP2) training through accelerate."""
