"""The dashboard in a real headless browser (Debian's Chromium driven by Playwright) against a
real server process: live cells, details, keyboard, recovery after a drop, long-poll fallback.

The server is fed plugin-shaped events over ``POST /ingest`` so every state change happens
exactly when the test says; the pages are waited on with Playwright's bounded waits.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess
from tests.unit.helpers import Scenario

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("FIREHOSE_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 20_000
T0 = 1_795_000_000.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (``./dev test`` installs Debian's chromium)."""
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.fail(f"no Chromium at {CHROMIUM}: ./dev test installs Debian's 'chromium' package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield pg
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def demo(start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, Scenario]:
    server = start_server(tokens={"bm1": "tok-bm1"})
    return server, Scenario("bm1", start=T0)


def feed(server: ServerProcess, scenario: Scenario) -> None:
    server.ingest(scenario.take())


def cell(page: Any, revision: str, builder: str) -> Any:
    return page.locator(f'td.cell[data-rev="{revision}"][data-builder="{builder}"]')


def history(s: Scenario) -> None:
    """Two revisions on main: r1 all green, r2 with linux still queued."""
    s.emit("change.new", {"changeid": 1, "branch": "main", "revision": "r1", "author": "ann",
                          "comments": "first"}, at=T0)
    for i, builder in enumerate(("linux", "mac")):
        s.build("started", i + 1, builder, "r1", started_at=T0 + 1, at=T0 + 1, tags=["desktop"])
        s.step("started", 10 + i, i + 1, builder, "compile", started_at=T0 + 1)
        s.step("finished", 10 + i, i + 1, builder, "compile", started_at=T0 + 1, complete_at=T0 + 30,
               result="success", results=0, urls=[{"name": "log", "url": "https://ci.example.invalid/log"}])
        s.build("finished", i + 1, builder, "r1", result="success", started_at=T0 + 1, at=T0 + 40,
                properties={"binary_url": "https://ci.example.invalid/bin.tgz"}, duration=39)
    s.emit("change.new", {"changeid": 2, "branch": "main", "revision": "r2", "author": "bob",
                          "comments": "second"}, at=T0 + 100)
    s.request("submitted", 3, "linux", "r2", at=T0 + 100)


def test_a_build_goes_from_pending_to_running_to_its_result(demo: Any, page: Any) -> None:
    """A queued build shows P, then R when it starts, then its result letter, all live; the
    queue and running panels follow; the last-green marker names the green revision."""
    server, s = demo
    history(s)
    feed(server, s)
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="live"][data-transport="websocket"]')
    assert cell(page, "r1", "linux").text_content() == "S"
    assert cell(page, "r2", "linux").get_attribute("data-state") == "pending"
    assert cell(page, "r2", "linux").text_content() == "P"
    assert "r1" in page.text_content("#lastgreen")
    page.wait_for_selector("#queue li")

    s.build("started", 3, "linux", "r2", started_at=T0 + 200, at=T0 + 200)
    s.request("claimed", 3, "linux", "r2", at=T0 + 200)
    feed(server, s)
    page.wait_for_selector('td.cell[data-rev="r2"][data-builder="linux"][data-state="running"]')
    assert cell(page, "r2", "linux").text_content() == "R"
    page.wait_for_selector("#running li[data-build='bm1/3']")

    s.build("finished", 3, "linux", "r2", result="failure", started_at=T0 + 200, at=T0 + 260)
    feed(server, s)
    page.wait_for_selector('td.cell[data-rev="r2"][data-builder="linux"][data-state="failure"]')
    assert cell(page, "r2", "linux").text_content() == "F"
    assert "failure" in cell(page, "r2", "linux").get_attribute("aria-label")
    page.wait_for_function("document.querySelectorAll('#running li').length === 0")


def test_clicking_or_keyboard_opens_the_builds_details(demo: Any, page: Any) -> None:
    """Enter on a focused cell (reached with the arrow keys) shows steps, durations,
    properties and links; Escape closes it and gives focus back."""
    server, s = demo
    history(s)
    feed(server, s)
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    first = page.locator('td.cell[tabindex="0"]')
    first.focus()
    page.keyboard.press("ArrowDown")
    focused = page.evaluate("document.activeElement.dataset.rev + '/' + document.activeElement.dataset.builder")
    assert focused.startswith("r1/"), focused
    page.keyboard.press("Enter")
    page.wait_for_selector("#details:not([hidden]) td:has-text('compile')")
    body = page.text_content("#details")
    assert "success" in body and "29s" in body and "binary_url" in body
    assert page.locator("#details a[href='https://ci.example.invalid/bin.tgz']").count() == 1
    assert page.locator("#details a[href='https://ci.example.invalid/log']").count() == 1
    page.keyboard.press("Escape")
    page.wait_for_selector("#details", state="hidden")
    assert page.evaluate("document.activeElement.dataset.rev") == "r1"


def test_filters_live_in_the_url(demo: Any, page: Any) -> None:
    """The builder filter narrows the columns and is kept in the URL, so the view can be shared."""
    server, s = demo
    history(s)
    feed(server, s)
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    page.fill("#builder", "mac*")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**builder=mac*")
    page.wait_for_selector('#connection[data-state="live"]')
    assert page.locator('td.cell[data-builder="linux"]').count() == 0
    assert page.locator('td.cell[data-builder="mac"]').count() >= 1
    shared = page.url
    other = page.context.new_page()
    other.goto(shared)
    other.wait_for_selector('td.cell[data-builder="mac"]')
    assert other.locator('td.cell[data-builder="linux"]').count() == 0
    assert other.input_value("#builder") == "mac*"


def test_recovers_after_the_server_restarts_without_reloading(demo: Any, page: Any) -> None:
    """When the server goes away the page says so, reconnects by itself when it is back, and
    resumes from its cursor: events published meanwhile arrive, and the page never reloads."""
    server, s = demo
    history(s)
    feed(server, s)
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    page.evaluate("window.__notReloaded = true")
    assert server.stop() == 0
    page.wait_for_selector('#connection[data-state="reconnecting"]')
    server.start()  # again: the same port and database, a restart rather than a new server
    s.build("started", 3, "linux", "r2", started_at=T0 + 200, at=T0 + 200)
    s.build("finished", 3, "linux", "r2", result="success", started_at=T0 + 200, at=T0 + 210)
    feed(server, s)
    page.wait_for_selector('td.cell[data-rev="r2"][data-builder="linux"][data-state="success"]')
    page.wait_for_selector('#connection[data-state="live"]')
    assert page.evaluate("window.__notReloaded") is True


def test_falls_back_to_long_poll_when_websocket_is_blocked(demo: Any, page: Any) -> None:
    """With every WebSocket closed before it can subscribe (as a proxy that blocks them would),
    the page switches to long-poll, says so, and still updates live."""
    server, s = demo
    history(s)
    feed(server, s)
    page.route_web_socket("**/ws", lambda ws: ws.close())
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="live"][data-transport="long-poll"]')
    s.build("started", 3, "linux", "r2", started_at=T0 + 200, at=T0 + 200)
    feed(server, s)
    page.wait_for_selector('td.cell[data-rev="r2"][data-builder="linux"][data-state="running"]')
    s.build("finished", 3, "linux", "r2", result="warnings", started_at=T0 + 200, at=T0 + 210)
    feed(server, s)
    page.wait_for_selector('td.cell[data-rev="r2"][data-builder="linux"][data-state="warnings"]')



def test_header_labels_fit_and_a_running_cell_shows_elapsed_against_the_median(demo: Any, page: Any) -> None:
    """Narrow groups' labels never overlap their neighbours (a long one is cut, its name in the
    tooltip); the rotated names take no more height than the longest needs; the branch selector
    says what it lists; a running cell tells its elapsed time against the builder's median."""
    server, s = demo
    now = time.time()
    for i, (builder, tag) in enumerate((("lx", "linux"), ("tt", "tests"), ("ww", "windows-and-more"))):
        s.build("started", i + 1, builder, "r1", started_at=now - 400, at=now - 400, tags=[tag])
        s.build("finished", i + 1, builder, "r1", result="success", started_at=now - 400, at=now - 280, duration=120)
    s.build("started", 9, "lx", "r2", started_at=now - 60, at=now - 60, tags=["linux"])
    feed(server, s)
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    boxes = page.eval_on_selector_all(
        "#pushlog tr.groups th[scope=colgroup]",
        "ths => ths.map((th) => { const r = th.getBoundingClientRect(), d = th.firstElementChild;"
        " return {left: r.left, right: r.right, title: th.title, fits: d.scrollWidth <= d.clientWidth,"
        " inside: d.getBoundingClientRect().right <= r.right + 0.5}; })")
    assert [b["title"] for b in boxes] == ["linux", "tests", "windows-and-more"]
    assert all(b["inside"] for b in boxes), boxes
    assert all(a["right"] <= b["left"] + 0.5 for a, b in itertools.pairwise(boxes)), boxes
    assert boxes[0]["fits"] and boxes[1]["fits"], "short labels are shown whole"
    names_height = page.eval_on_selector("#pushlog tr.builders th", "th => th.getBoundingClientRect().height")
    assert names_height < 100, names_height  # 2-letter names: far below the 9rem cap
    assert "branch" in (page.get_attribute("#branch", "title") or "")
    running = cell(page, "r2", "lx")
    assert running.get_attribute("data-state") == "running"
    label = running.get_attribute("aria-label")
    assert "elapsed of a 2m00s median" in label, label
    assert "--progress" in (running.get_attribute("style") or "")


def test_a_new_journal_behind_the_same_url_is_a_gap_the_page_resyncs_from(demo: Any, page: Any) -> None:
    """The server comes back with a new journal (another epoch): the page's cursor gets an
    ``epoch`` gap, so it takes a new snapshot and follows on from it, without a reload."""
    server, s = demo
    history(s)
    feed(server, s)
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    page.wait_for_selector('td.cell[data-rev="r1"][data-builder="linux"]')
    page.evaluate("window.__notReloaded = true")
    assert server.stop() == 0
    for suffix in ("", "-wal", "-shm", ".state"):
        Path(str(server.db) + suffix).unlink(missing_ok=True)
    server.start()
    fresh = Scenario("bm1", incarnation="i2", start=T0 + 1000)
    fresh.build("started", 50, "linux", "r9", started_at=T0 + 1000, at=T0 + 1000)
    feed(server, fresh)
    page.wait_for_selector('td.cell[data-rev="r9"][data-builder="linux"][data-state="running"]')
    page.wait_for_selector('tr[data-rev="r1"]', state="detached")   # the old journal's revisions are gone
    page.wait_for_selector('#connection[data-state="live"]')
    assert page.evaluate("window.__notReloaded") is True


def test_a_warming_server_is_shown_as_warming_up_then_the_grid_loads(demo: Any, page: Any) -> None:
    """While /api answers 503 ``warming_up`` (a start without its state checkpoint), the page
    says the server is warming up instead of "offline", asks again after ``Retry-After``, and
    shows the grid once the state answers.  The 503s are the server's own shape, served by a
    route for the first two questions."""
    server, s = demo
    history(s)
    feed(server, s)
    warming = {"n": 0}
    body = ('{"error": "warming_up", "message": "the build state is warming up", "progress": '
            '{"source": "journal", "replayed": 10, "remaining": 90, "percent": 10.0, "elapsed": 0.5}}')

    def route(r: Any) -> None:
        if warming["n"] < 2:
            warming["n"] += 1
            r.fulfill(status=503, body=body, headers={"Content-Type": "application/json", "Retry-After": "1"})
        else:
            r.continue_()

    page.route("**/api/revisions*", route)
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="warming"]')
    assert "warming up" in page.text_content("#connection")
    page.wait_for_selector('#connection[data-state="live"]')
    assert warming["n"] == 2
    assert cell(page, "r1", "linux").text_content() == "S"
