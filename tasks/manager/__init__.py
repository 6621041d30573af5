"""The training manager: the request queue, starting detached training attempts, reading their state from the
Prefect API, deciding what to do with each (pure), and the report of each pass."""
