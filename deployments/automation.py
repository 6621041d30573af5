"""The Prefect automation that says when a train run failed for good: `serve.sh` runs this after `prefect deploy`.

    python deployments/automation.py        # with PREFECT_API_URL set; creates it, or updates the one it made before

A train deployment run that ends Failed or Crashed and is not running again within `--within` seconds (the
training manager reschedules a preempted or lost deployment run under the same flow run, on its next pass: every
5 minutes as deployed) failed for good. The automation's trigger is proactive: after `prefect.flow-run.Failed` or
`prefect.flow-run.Crashed` of a run of the `train` flow that has a deployment, it expects the same run's
AwaitingRetry, Pending or Running; none within the window fires it. The server's triggers service evaluates it.

Its action: a notification through the block named by $GANFLOW_NOTIFY_BLOCK (`BLOCK_TYPE/NAME`, e.g.
`slack-webhook/ganflow-alerts` or `email/ganflow-alerts`; see the README), or, without one, nothing but the
automation's own record in the UI (Automations, and its events), until a block is named and this runs again.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

NAME = "ganflow: train run failed for good"
ENDED = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")
AGAIN = ("prefect.flow-run.AwaitingRetry", "prefect.flow-run.Pending", "prefect.flow-run.Running")
WITHIN_S = 900  # above the manager deployment's 300 s interval plus a pass: a rescheduled run is not reported
BODY = ("Train run {{ flow_run.name }} ended {{ flow_run.state.name }} and was not rescheduled: "
        "{{ flow_run.state.message }}\nParameters: {{ flow_run.parameters }}")


def automation(within_s: float = WITHIN_S, notify_block_id=None):
    from prefect.events.actions import DoNothing, SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    trigger = EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": "train"},
                       {"prefect.resource.role": "deployment"}],
        after=set(ENDED), expect=set(AGAIN), for_each={"prefect.resource.id"},
        posture=Posture.Proactive, threshold=1, within=timedelta(seconds=within_s))
    action = (SendNotification(block_document_id=notify_block_id, subject="ganflow: a train run failed for good",
                               body=BODY) if notify_block_id else DoNothing())
    return AutomationCore(name=NAME, description=__doc__.split("\n\n")[1].replace("\n", " "), enabled=True,
                          trigger=trigger, actions=[action])


def notify_block_id(client, named: str):
    """The id of the notification block `BLOCK_TYPE/NAME`; exits with one line when there is none."""
    block_type, _, name = named.partition("/")
    try:
        return client.read_block_document_by_name(name, block_type).id
    except Exception as e:  # ObjectNotFound, a malformed name: say which
        sys.exit(f"GANFLOW_NOTIFY_BLOCK={named}: no such notification block ({type(e).__name__}); create it "
                 "in the UI (Blocks) or with its Python class's .save(), or unset GANFLOW_NOTIFY_BLOCK")


def ensure(client, wanted) -> tuple[str, str]:
    """Create the automation, or update the one of that name (and drop duplicates): idempotent."""
    found = client.read_automations_by_name(wanted.name)
    for extra in found[1:]:
        client.delete_automation(extra.id)
    if found:
        client.update_automation(found[0].id, wanted)
        return "updated", str(found[0].id)
    return "created", str(client.create_automation(wanted))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--within", type=float, default=WITHIN_S,
                        help="seconds a Failed/Crashed train run has to run again before it is reported")
    args = parser.parse_args(argv)
    from prefect import get_client

    with get_client(sync_client=True) as client:
        named = os.environ.get("GANFLOW_NOTIFY_BLOCK", "")
        block_id = notify_block_id(client, named) if named else None
        done, automation_id = ensure(client, automation(args.within, block_id))
    print(f"automation '{NAME}' {done} ({automation_id}); notifies "
          f"{'through ' + named if named else 'nobody yet: set GANFLOW_NOTIFY_BLOCK (README)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
