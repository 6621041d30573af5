"""Which task failures are worth a Prefect retry."""
from __future__ import annotations


def retry_unless_setup_error(task, task_run, state) -> bool:
    """Retry transient failures; not a ValueError (a bad tag or session file, a missing dataset, a bad
    config, a checkpoint from another version): those fail the same way on every attempt."""
    try:
        state.result()
    except ValueError:
        return False
    except Exception:
        return True
    return True
