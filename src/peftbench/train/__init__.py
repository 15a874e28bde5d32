"""Training: the optimizer, the step loop with measurement, checkpoint selection."""
