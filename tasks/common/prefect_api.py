"""The Prefect API as ganflow's commands reach it: every request bounded, the server asked first, one line when it
does not answer.

Prefect's client waits 60 s per request and retries 5 times with backoff: a PREFECT_API_URL that accepts and
never answers held `ganflow manager` about 7 minutes, and a SIGTERM then waited for the crash report (another
round of the same). Here a command (a) lowers those two to API_TIMEOUT_S and API_RETRIES unless the user set them
(PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES: Prefect's own settings, so a profile or the environment
still decides), (b) asks the server's /health once within PROBE_TIMEOUT_S before a flow starts, and (c) says an API
that stopped answering mid-command in one line (api_failure)."""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

API_TIMEOUT_S = 30.0   # per request (connect, read, write, pool); Prefect's default is 60. 10 s was too short:
#                        a busy SQLite-backed server on 2 loaded cores answered slower (CI, 2026-12-08)
API_RETRIES = 2        # Prefect's default is 5; with its backoff a stalled API costs at most ~100 s per call
PROBE_TIMEOUT_S = 15.0  # the /health question before a flow starts (a refused connection fails at once)


class ApiUnreachable(ConnectionError):
    """The configured Prefect API did not answer; the message names it and the setting to check."""


def bounded_requests() -> AbstractContextManager:
    """Prefect's request timeout and retries for this command: ours, unless the user set them (in the environment
    or a profile, i.e. to anything but Prefect's defaults)."""
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    updates: dict = {}
    if "PREFECT_API_REQUEST_TIMEOUT" not in os.environ and PREFECT_API_REQUEST_TIMEOUT.value() == 60.0:
        updates[PREFECT_API_REQUEST_TIMEOUT] = API_TIMEOUT_S
    if "PREFECT_CLIENT_MAX_RETRIES" not in os.environ and PREFECT_CLIENT_MAX_RETRIES.value() == 5:
        updates[PREFECT_CLIENT_MAX_RETRIES] = API_RETRIES
    return temporary_settings(updates) if updates else nullcontext()


def configured_url() -> str | None:
    """PREFECT_API_URL, or None: a flow then starts Prefect's temporary local server, which nothing can stall."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def probe(timeout: float | None = None) -> None:
    """Ask the configured API's /health once, within `timeout` s, no retries; ApiUnreachable if it does not
    answer. An answer of any kind (even an error status: a proxy, a wrong path) is left to the real call to say."""
    import httpx
    from prefect import get_client
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    url = configured_url()
    if not url:
        return
    timeout = timeout or PROBE_TIMEOUT_S
    with temporary_settings({PREFECT_API_REQUEST_TIMEOUT: timeout, PREFECT_CLIENT_MAX_RETRIES: 0}):
        with get_client(sync_client=True) as client:
            error = client.api_healthcheck()
    if isinstance(error, httpx.TransportError):
        raise ApiUnreachable(_said(url, error, f"within {timeout:g} s"))


def api_failure(error: BaseException) -> str | None:
    """One line for an error that is the Prefect API not answering (a timeout, a refused or dropped connection,
    anywhere in its cause chain, e.g. Prefect's "Failed to reach API" RuntimeError); None for any other error."""
    import httpx

    seen = 0
    cause: BaseException | None = error
    while cause is not None and seen < 16:
        if isinstance(cause, httpx.TransportError):
            url = configured_url() or "PREFECT_API_URL"
            from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES

            return _said(url, cause, f"(PREFECT_API_REQUEST_TIMEOUT {PREFECT_API_REQUEST_TIMEOUT.value():g} s, "
                                     f"PREFECT_CLIENT_MAX_RETRIES {PREFECT_CLIENT_MAX_RETRIES.value()})")
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def _said(url: str, error: BaseException, bound: str) -> str:
    name = type(error).__name__
    why = "timed out" if "Timeout" in name else "no connection" if name == "ConnectError" else name
    return (f"the Prefect API at {url} did not answer {bound}: {why}; check that its server is up and "
            f"PREFECT_API_URL (unset it to run on a temporary local server)")
