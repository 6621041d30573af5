"""Prefect flows that only compose tasks, and the `ganflow` CLI."""
