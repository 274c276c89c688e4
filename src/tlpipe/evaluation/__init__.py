"""Metrics, linear probes, inference cost and the figures of a report."""
