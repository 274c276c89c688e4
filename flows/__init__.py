"""Prefect flows and the tlpipe command."""
