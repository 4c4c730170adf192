"""The training loop and what it needs: optimisation, checkpoints, validation, tracking."""
