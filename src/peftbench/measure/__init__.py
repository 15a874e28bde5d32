"""Measured costs: FLOPs, memory, parameters, bytes on disk."""
