"""`ganflow serve` end to end in a real headless Chromium: Debian's /usr/bin/chromium (installed by `make test`),
driven by Playwright with that executable (Playwright's own browser download is never used). The page is served on
localhost by uvicorn; the test sets a seed and a resolution and checks that an image of that size appears, then the
download, the nearest training images, the morph, the FID table and an error message; the page's screenshot is saved
as a test artifact."""
from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_serve import make_run, training_neighbours

CHROMIUM = os.environ.get("GANFLOW_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("GANFLOW_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
# Headless on a machine with a closed network: no GPU, and none of Chromium's background connections (they are
# refused here, many at a time, and slow its start).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _missing(why: str):
    # CI installs Chromium through `make test`: there a missing browser is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get, as root or with sudo)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is missing: `make install` installs the dev extras")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@contextmanager
def serving(app):
    """The app on 127.0.0.1 at a free port, in a thread of this process (uvicorn, as `ganflow serve` runs it)."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread) -> Path:
    return make_run(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    from tasks.serving.app import Explorer, create_app

    explorer = Explorer(run_dir=run, training=training_neighbours(run, tmp_path_factory.mktemp("browser-nearest")))
    with serving(create_app(explorer)) as url:
        yield url


def test_page_in_chromium_draws_the_chosen_seed_at_the_chosen_resolution(browser, server, tmp_path):
    from PIL import Image

    page = browser.new_page(viewport={"width": 1000, "height": 760})
    page.set_default_timeout(60_000)  # two shared cores, a test suite beside it
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#image[data-seed='0'][data-resolution='32']")  # the first render: seed 0, native size

    page.fill("#seed", "1234")
    page.select_option("#resolution", "64")  # its change event draws with the seed field's value
    page.wait_for_selector("#image[data-seed='1234'][data-resolution='64']")
    size = page.eval_on_selector("#image", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [64, 64]
    assert page.text_content("#image-size") == "64×64"

    # The download button saves what is shown: the API's PNG of that seed and size.
    with page.expect_download() as dl:
        page.click("#download")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == "seed1234-64px.png" and Image.open(saved).size == (64, 64)
    api = page.request.get(server + "/api/image.png?seed=1234&resolution=64&truncation=1")
    assert api.ok and saved.read_bytes() == api.body()

    # The 3 training images nearest to seed 1234's image, each shown (32² training images) with its distance.
    page.wait_for_selector("#nearest[data-seed='1234'] figure")
    assert page.locator("#nearest figure").count() == 3
    page.wait_for_function("() => [...document.querySelectorAll('#nearest img')]"
                           ".every((img) => img.complete && img.naturalWidth === 32)")
    captions = page.locator("#nearest figcaption").all_text_contents()
    distances = [float(c.removeprefix("d = ")) for c in captions]
    assert distances == sorted(distances) and distances[0] > 0
    nearest = page.request.get(server + "/api/nearest?seed=1234&truncation=1&count=3").json()
    assert [float(f"{n['distance']:.4g}") for n in nearest["neighbours"]] == distances
    assert "τ" in page.text_content("#nearest-note")

    # The neighbour grid (9 tiles at 64²) and the morph (to seed 7) at the chosen size.
    page.wait_for_function("() => document.getElementById('neighbours').naturalWidth === 192")
    page.fill("#seed-b", "7")
    page.fill("#frames", "8")
    page.click("#play")
    page.wait_for_function("() => document.getElementById('morph').naturalWidth === 64")

    # The run's FID table, best row marked, with a button to show each snapshot.
    page.wait_for_selector("#fid table")
    assert page.locator("#fid tbody tr").count() == 2
    assert page.locator("#fid tr.best").count() == 1 and page.locator("#fid tr.diverged").count() == 1
    headers = page.locator("#fid th").all_text_contents()
    assert headers == ["kimg", "FID", "KID", "FD-DINOv2", "precision", "recall", "memorized", "note", ""]
    # each score as the registry formats it (tasks.evaluation.registry: the evaluation's table and progress line)
    assert page.locator("#fid tr.best td").all_text_contents()[1:8] == [
        "12.5000", "0.01250", "310.000", "0.500", "0.250", "12.5%", "best"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

    # A bad seed is refused by the API and its message shown in the page.
    page.fill("#seed", "-5")
    page.press("#seed", "Tab")  # change fires on leaving the field
    page.wait_for_function("() => document.getElementById('error').textContent.includes('seed')")
    assert "greater than or equal to 0" in page.text_content("#error")
    assert errors == []  # no uncaught JavaScript error
    page.close()


def test_a_registered_metric_is_a_column_of_the_page_fid_table(browser, run, tmp_path):
    """A metric registered before the app is created: its label heads a column of the page's FID table, after the
    built-in ones, and its values are written in its format; no edit to the page or the API."""
    from tasks.evaluation import registry
    from tasks.evaluation.fid_table import read_fid_csv, write_fid_csv
    from tasks.serving.app import Explorer, create_app

    shutil.copytree(run, tmp_path / "run")

    @registry.register("sharpness", "first", (registry.Column("sharpness", label="Sharpness", fmt="{:.1f}"),),
                       order=70)
    def sharpness(s, space) -> dict:
        return {"sharpness": 1.0}

    try:
        rows = read_fid_csv(tmp_path / "run")
        rows[0]["sharpness"] = 3.14159
        write_fid_csv(tmp_path / "run", rows)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        with serving(create_app(Explorer(run_dir=tmp_path / "run"))) as url:
            page.goto(url + "/")
            page.wait_for_selector("#fid table")
            headers = page.locator("#fid th").all_text_contents()
            assert headers == ["kimg", "FID", "KID", "FD-DINOv2", "precision", "recall", "memorized", "Sharpness",
                               "note", ""]
            assert page.locator("#fid tr.best td").all_text_contents()[7] == "3.1"  # {:.1f}
            assert page.locator("#fid tr.diverged td").all_text_contents()[7] == "–"
        assert errors == []
        page.close()
    finally:
        registry.unregister("sharpness")
