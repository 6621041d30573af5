"""Hostile run folders and requests against `ganflow serve` (issue 15, point 7): links and FIFOs named like
snapshots or tables are never read (and never hang or break a request), errors never quote a file or show an
absolute path, the Host header must name the bound address (DNS rebinding), and heavy requests wait in a bounded
queue (429 when it is full, 503 after the wait limit)."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tasks.serving.app import Explorer, Limits, allowed_hosts, create_app, host_of, read_regular
from tests.hostile.crafted import fifo, planted_checkpoint, tiny_run

LOCAL = "http://127.0.0.1:8000"
ENDPOINTS = [("/api/snapshots", {}), ("/api/info", {}), ("/api/fid", {}), ("/api/image.png", {"seed": 3}),
             ("/api/neighbours.png", {"seed": 3, "count": 2}), ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "frames": 2})]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread) -> Path:
    return tiny_run(tmp_path_factory.mktemp("hostile-serve"))[1]


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the run for each test to plant things in."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def client(run: Path, limits: Limits = Limits()) -> TestClient:
    explorer = Explorer(run_dir=run, limits=limits)
    return TestClient(create_app(explorer, allowed_hosts("127.0.0.1")), base_url=LOCAL, raise_server_exceptions=False)


def all_endpoints_answer(c: TestClient, *forbidden: str) -> None:
    for path, params in ENDPOINTS:
        r = c.get(path, params=params)
        assert r.status_code == 200, (path, r.status_code, r.text)
        for text in forbidden:
            assert text.encode() not in r.content, (path, text)


# ------------------------------------------------------------------ links, loops, FIFOs
def test_a_self_referencing_link_named_like_a_checkpoint_breaks_nothing(run):
    loop = run / "checkpoints" / "ckpt-0000077.000.pt"
    loop.symlink_to(loop.name)  # points at itself: resolving it loops
    c = client(run)
    all_endpoints_answer(c)
    assert "checkpoints/ckpt-0000077.000.pt" not in [s["name"] for s in c.get("/api/snapshots").json()["snapshots"]]
    r = c.get("/api/image.png", params={"seed": 1, "snapshot": "checkpoints/ckpt-0000077.000.pt"})
    assert r.status_code == 422 and "unknown snapshot" in r.json()["detail"]


def test_a_best_pt_link_loop_and_a_linked_checkpoints_folder_are_left_out(run, tmp_path):
    (run / "best.pt").unlink()
    (run / "best.pt").symlink_to("best.pt")
    outside = tmp_path / "elsewhere"
    shutil.move(str(run / "checkpoints"), outside)
    (run / "checkpoints").symlink_to(outside)  # a checkpoints folder that is a link out of the run
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        Explorer(run_dir=run)  # nothing inside the run folder itself: nothing to serve


def test_links_to_real_snapshots_inside_the_run_are_not_followed_either(run):
    (run / "checkpoints" / "ckpt-0000055.000.pt").symlink_to(run / "best.pt")
    names = [s["name"] for s in client(run).get("/api/snapshots").json()["snapshots"]]
    assert "checkpoints/ckpt-0000055.000.pt" not in names and "best.pt" in names


def test_a_fifo_named_like_a_checkpoint_or_a_table_never_blocks(run):
    for name in ("checkpoints/ckpt-0000088.000.pt", "fid.csv", "metrics.json"):
        path = run / name
        if path.exists():
            path.unlink()
        fifo(path)
    c = client(run)
    all_endpoints_answer(c)  # would hang forever on an open() of a FIFO with no writer
    assert c.get("/api/fid").json()["rows"] == []
    assert read_regular(run / "fid.csv", 1 << 20) is None


def test_fid_csv_linked_out_of_the_run_is_not_read_nor_echoed(run, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("kimg,fid\nTOP-SECRET-CELL,1.0\n")
    (run / "fid.csv").unlink()
    (run / "fid.csv").symlink_to(secret)
    c = client(run)
    body = c.get("/api/fid").json()
    assert body["rows"] == [] and "TOP-SECRET" not in str(body) and str(tmp_path) not in body["note"]
    all_endpoints_answer(c, "TOP-SECRET", str(tmp_path))


def test_a_cell_that_is_not_a_number_is_not_echoed(run, tmp_path):
    (run / "fid.csv").write_text("kimg,fid\n0.008,TOP-SECRET-CELL\n")
    body = client(run).get("/api/fid").json()
    assert body["rows"] == [] and "does not read" in body["note"]
    assert "TOP-SECRET" not in body["note"] and str(tmp_path) not in body["note"]


def test_an_empty_kimg_cell_is_left_out_not_a_500(run):
    (run / "fid.csv").write_text("kimg,fid,kid\n,3.0,\n0.008,12.5,\n")
    body = client(run).get("/api/fid").json()
    assert [r["kimg"] for r in body["rows"]] == [0.008] and "without a kimg" in body["note"]


def test_odd_metrics_json_is_ignored(run):
    for text in ('{"best": {"kimg": "x"}, "flagged": 3}', "[1, 2]", "{not json", '{"best": {"kimg": NaN}}'):
        (run / "metrics.json").write_text(text)
        all_endpoints_answer(client(run))


# ------------------------------------------------------------------ messages: no file contents, no absolute paths
def test_422_messages_name_snapshots_relative_to_the_run(run, tmp_path):
    marker = tmp_path / "pwned"
    planted_checkpoint(run / "checkpoints" / "ckpt-0000066.000.pt", marker, like=run / "best.pt")
    c = client(run)
    r = c.get("/api/image.png", params={"seed": 1, "snapshot": "checkpoints/ckpt-0000066.000.pt"})
    assert r.status_code == 422 and "checkpoints/ckpt-0000066.000.pt" in r.json()["detail"]
    assert str(tmp_path) not in r.text and "Unsupported global" not in r.text and not marker.exists()
    for params in ({"seed": 1, "snapshot": "nope.pt"}, {"seed": 1, "resolution": 48}):
        r = c.get("/api/image.png", params=params)
        assert r.status_code == 422 and str(tmp_path) not in r.text and "/" + run.name not in r.text
    (run / "fid.csv").unlink()
    body = c.get("/api/fid").json()
    assert "ganflow evaluate" in body["note"] and str(tmp_path) not in body["note"]


def test_a_server_bug_answers_500_without_details(run, monkeypatch):
    c = client(run)
    monkeypatch.setattr(Explorer, "fid_table", lambda self, *args: open(f"{run}/no/such/file").read())
    r = c.get("/api/fid")
    assert r.status_code == 500 and str(run) not in r.text and "FileNotFoundError" in r.json()["detail"]


# ------------------------------------------------------------------ Host and Origin
def test_dns_rebinding_host_is_refused(run):
    c = client(run)
    r = c.get("/api/info", headers={"host": "evil.com"})
    assert r.status_code == 400 and "evil.com" in r.json()["detail"] and "--allow-host" in r.json()["detail"]
    assert c.get("/", headers={"host": "evil.com:8000"}).status_code == 400
    for good in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"):
        assert c.get("/api/info", headers={"host": good}).status_code == 200, good
    r = c.get("/api/info", headers={"origin": "http://evil.com"})
    assert r.status_code == 403
    assert c.get("/api/info", headers={"origin": LOCAL}).status_code == 200


def test_allow_host_adds_names_and_star_allows_any(run):
    ex = Explorer(run_dir=run)
    c = TestClient(create_app(ex, allowed_hosts("127.0.0.1", ["gan.example"])), base_url=LOCAL)
    assert c.get("/api/info", headers={"host": "gan.example:8000"}).status_code == 200
    assert c.get("/api/info", headers={"host": "evil.com"}).status_code == 400
    anyhost = TestClient(create_app(ex, allowed_hosts("127.0.0.1", ["*"])), base_url=LOCAL)
    assert anyhost.get("/api/info", headers={"host": "evil.com"}).status_code == 200


def test_allowed_hosts_for_each_bind():
    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts("10.1.2.3") == {"10.1.2.3"}
    import socket
    assert {"127.0.0.1", socket.gethostname().lower()} <= allowed_hosts("0.0.0.0")
    assert "evil.com" not in allowed_hosts("0.0.0.0")
    assert host_of("[::1]:80") == "::1" and host_of("Example.COM.:8000") == "example.com" and host_of("::1") == "::1"


def test_cli_serve_checks_host_and_takes_allow_host(run, monkeypatch, capsys):
    import uvicorn

    from flows.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", "--run-dir", str(run), "--allow-host", "gan.example", "--queue", "2", "--max-wait", "5"]) == 0
    c = TestClient(seen["app"], base_url=LOCAL)
    assert c.get("/api/info", headers={"host": "evil.com"}).status_code == 400
    assert c.get("/api/info", headers={"host": "gan.example"}).status_code == 200
    limits = c.get("/api/info").json()["limits"]
    assert (limits["max_queue"], limits["max_wait_s"]) == (2, 5.0)


# ------------------------------------------------------------------ the bounded queue
def test_a_full_queue_answers_429_at_once(run):
    c = client(run, Limits(max_queue=0))
    c.get("/api/info")  # loaded before the gate is taken
    ex = c.app.state.explorer  # type: ignore[attr-defined]  # TestClient.app is typed as any ASGI app
    with ex.gate:  # the generator is busy with another request
        r = c.get("/api/image.png", params={"seed": 1})
    assert r.status_code == 429 and "busy" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    assert c.get("/api/image.png", params={"seed": 1}).status_code == 200  # free again


def test_a_request_that_waits_too_long_answers_503(run):
    c = client(run, Limits(max_queue=4, max_wait_s=0.01))
    c.get("/api/info")
    ex = c.app.state.explorer  # type: ignore[attr-defined]  # TestClient.app is typed as any ASGI app
    with ex.gate:
        r = c.get("/api/morph.gif", params={"seed_a": 1, "seed_b": 2, "frames": 2})
    assert r.status_code == 503 and "busy" in r.json()["detail"] and "retry-after" in r.headers


def test_waiting_requests_are_bounded_and_served_in_turn(run):
    c = client(run, Limits(max_queue=1, max_wait_s=600))
    c.get("/api/info")
    ex = c.app.state.explorer  # type: ignore[attr-defined]  # TestClient.app is typed as any ASGI app
    results = {}
    ex.gate.__enter__()
    try:
        waiter = threading.Thread(target=lambda: results.update(a=c.get("/api/image.png", params={"seed": 1})))
        waiter.start()
        while ex.gate.waiting < 1:  # the first one is queued behind the busy generator
            waiter.join(0.01)
        r = c.get("/api/image.png", params={"seed": 2})  # the queue (1) is full
        assert r.status_code == 429
        assert c.get("/api/snapshots").status_code == 200  # light requests do not queue
    finally:
        ex.gate.__exit__(None, None, None)
    waiter.join()
    assert results["a"].status_code == 200


# ------------------------------------------------------------------ issue 28, point 5: the exact origin, HEAD
def served_on(run: Path, port: int = 8000) -> TestClient:
    """The app as `ganflow serve --host 127.0.0.1 --port 8000` makes it (Host and Origin must name that port)."""
    return TestClient(create_app(Explorer(run_dir=run), allowed_hosts("127.0.0.1"), port=port), base_url=LOCAL,
                      raise_server_exceptions=False)


@pytest.mark.parametrize("header, value", [
    ("origin", "null"),                              # a sandboxed frame or a file:// page
    ("origin", "http://127.0.0.1:9999"),             # another port on this machine: another site
    ("origin", "http://127.0.0.1"),                  # port 80, not the served 8000
    ("origin", "https://127.0.0.1:8000"),            # https: the page is served over http
    ("origin", "http://evil.com@127.0.0.1:8000"),
    ("origin", "http://127.0.0.1:8000@evil.com"),
    ("origin", "http://127.0.0.1:8000.evil.com"),
    ("origin", "http://127.0.0.1.evil.com:8000"),
    ("origin", "http://127.0.0.1:8000/path"),
    ("origin", "ftp://127.0.0.1:8000"),
    ("host", "127.0.0.1:9999"),
    ("host", "127.0.0.1"),
    ("host", "evil.com@127.0.0.1:8000"),
    ("host", "127.0.0.1:8000@evil.com"),
    ("host", "127.0.0.1:8000.evil.com"),
    ("host", "127.0.0.1.evil.com:8000"),
    ("host", "localhost:8000 extra"),
])
def test_only_the_exact_origin_it_serves_is_answered(run, header, value):
    r = served_on(run).get("/api/info", headers={header: value})
    assert r.status_code == (403 if header == "origin" else 400), (value, r.status_code)


@pytest.mark.parametrize("header, value", [("origin", "http://127.0.0.1:8000"), ("origin", "http://localhost:8000"),
                                           ("origin", "http://[::1]:8000"), ("host", "LOCALHOST:8000"),
                                           ("host", "[::1]:8000"), ("host", "localhost.:8000")])
def test_the_served_origin_in_any_of_its_names_is_answered(run, header, value):
    assert served_on(run).get("/api/info", headers={header: value}).status_code == 200


def test_head_answers_like_get_without_a_body(run):
    c = served_on(run)
    for path, params in [("/", {}), ("/api/info", {}), ("/api/image.png", {"seed": 3})]:
        got, head = c.get(path, params=params), c.head(path, params=params)
        assert head.status_code == got.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers.get("content-length") == got.headers.get("content-length")
    assert c.head("/api/info", headers={"origin": "null"}).status_code == 403


def test_a_proxied_name_is_answered_on_its_default_port_and_only_it(run):
    c = TestClient(create_app(Explorer(run_dir=run), allowed_hosts("127.0.0.1", ["gan.example"]), port=8000,
                              proxied={"gan.example"}), base_url=LOCAL)
    for host, origin in (("gan.example", "https://gan.example"), ("gan.example:443", "http://gan.example"),
                         ("gan.example:8000", "http://gan.example:8000")):
        assert c.get("/api/info", headers={"host": host, "origin": origin}).status_code == 200, (host, origin)
    assert c.get("/api/info", headers={"host": "gan.example:9999"}).status_code == 400
    assert c.get("/api/info", headers={"origin": "https://gan.example:9999"}).status_code == 403
    assert c.get("/api/info", headers={"host": "127.0.0.1"}).status_code == 400  # a bound name: the served port only
    assert c.get("/api/info", headers={"origin": "https://127.0.0.1:8000"}).status_code == 403
