"""The generic training loop, run folders and checkpoints."""
