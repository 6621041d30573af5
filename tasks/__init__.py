"""Units of work: pure functions (testable without Prefect) plus thin @task wrappers."""
