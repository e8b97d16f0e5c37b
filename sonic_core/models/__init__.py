"""Network definitions whose parameter names match the official Sonic checkpoints."""
