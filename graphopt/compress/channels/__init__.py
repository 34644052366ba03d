"""Structured pruning: hidden channels (FFN units, expansion channels) and attention heads
removed with a least-squares refit of their consumer (`--prune macs=X`)."""
