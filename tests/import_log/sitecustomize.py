"""Test-only: put on PYTHONPATH (tests/test_dvc_pipeline.py), it records which of the project's modules each
`dvc repro` stage command imports, in its own process and in any process it starts.

DVC sets DVC_STAGE for every stage command (and its children inherit it); GANFLOW_IMPORT_LOG names a folder.
Each import statement of a models/tasks/flows module appends its name to FOLDER/<stage>.txt as it happens, so a
worker process that is killed rather than exiting still counts; at exit, every such module loaded is appended too.
"""
import os
import sys

_LOG, _STAGE = os.environ.get("GANFLOW_IMPORT_LOG"), os.environ.get("DVC_STAGE")


def _record(event: str, args: tuple) -> None:
    if event == "import" and str(args[0]).split(".")[0] in ("models", "tasks", "flows"):
        with open(os.path.join(_LOG, f"{_STAGE}.txt"), "a") as f:  # one short line per append: no interleaving
            f.write(f"{args[0]}\n")


def _record_loaded() -> None:
    """At exit, every project module loaded, also those importlib.import_module loaded (it raises no audit event:
    `ganflow` loads a command's module that way)."""
    with open(os.path.join(_LOG, f"{_STAGE}.txt"), "a") as f:
        f.write("".join(f"{name}\n" for name in list(sys.modules) if name.split(".")[0] in ("models", "tasks", "flows")))


if _LOG and _STAGE:
    import atexit

    sys.addaudithook(_record)
    atexit.register(_record_loaded)
