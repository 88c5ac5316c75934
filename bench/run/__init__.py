"""One continual run: set-up (accelerator, task order, attaching a method), the protocol loop, evaluation of every task after every stage, and restoring a run from its checkpoints."""
