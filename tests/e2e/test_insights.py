"""The pages of issue 14 in a real headless Chromium, against a real ``firehose serve`` fed by a
REAL Buildbot master and worker with the plugin (logs on): the insights charts and their table
views match the API and move live, a failed build's summary shows its failed step and log tail,
and a watched push notifies exactly once when its last build finishes.

Builds are held by gate files (``pages_support``), so each test decides when a build finishes;
every wait is bounded (Playwright's ``wait_for_*`` with timeouts, ``conftest.wait_for``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess, http_get
from tests.e2e.pages_support import FAIL_LINE, MASTER, TOKEN, BuildbotCI, browser, new_page, revision
from tests.unit.helpers import Scenario

pytestmark = pytest.mark.slow

__all__ = ["browser"]  # the fixture, used by name

_numbers = itertools.count(1)

#: Records every system notification the page makes (the real one is still made).
CAPTURE_NOTIFICATIONS = """
window.__notes = [];
(() => {
  const Real = window.Notification;
  if (!Real) return;
  function Captured(title, options) {
    window.__notes.push({ title, body: options && options.body, tag: options && options.tag });
    try { return new Real(title, options); } catch (e) { return {}; }
  }
  Captured.requestPermission = (...a) => Real.requestPermission(...a);
  Object.defineProperty(Captured, "permission", { get: () => Real.permission, configurable: true });
  window.Notification = Captured;
})();
"""


@pytest.fixture(scope="module")
def ci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildbotCI]:
    """One server and one real master + worker for the module; each test pushes its own revisions."""
    base: Path = tmp_path_factory.mktemp("pages")
    server = ServerProcess(base / "journal.sqlite", base / "server.log", {MASTER: TOKEN}, ())
    server.start()
    built: BuildbotCI | None = None
    try:
        built = BuildbotCI(server, base / "ci")
        yield built
    finally:
        if built is not None:
            built.stop()
        server.kill()


@pytest.fixture
def errors() -> Iterator[list[str]]:
    found: list[str] = []
    yield found
    assert found == [], f"JavaScript errors on the page: {found}"


def fresh_revision() -> str:
    return revision(next(_numbers))


def push_and_finish(ci: BuildbotCI) -> str:
    rev = fresh_revision()
    ci.push(rev)
    for builder in ("fail-build", "pass-build"):
        ci.release(rev, builder)
    return rev


# --------------------------------------------------------------------------------------------
# Insights
# --------------------------------------------------------------------------------------------

INSIGHTS = "/insights.html?builder=pass-build&window=3600&bucket=60"


def page_numbers(page: Any) -> dict[str, Any]:
    """What the page draws: the uPlot series and the bars, and what its tables hold."""
    return page.evaluate("""() => {
      const s = window.firehoseInsights.state;
      const col = (id, i) => [...document.querySelectorAll(`#${id} tbody tr[data-start]`)]
        .map((tr) => Number(tr.children[i].dataset.value));
      const starts = (id) => [...document.querySelectorAll(`#${id} tbody tr[data-start]`)].map((tr) => Number(tr.dataset.start));
      const bars = [...document.querySelectorAll('#steps-chart li[data-step]')].map((li) => ({
        builder: li.dataset.builder, step: li.dataset.step, total: Number(li.dataset.total),
        mean: Number(li.dataset.mean), p95: Number(li.dataset.p95), count: Number(li.dataset.count)}));
      const rows = [...document.querySelectorAll('#steps-table tbody tr[data-step]')].map((tr) => ({
        builder: tr.dataset.builder, step: tr.dataset.step, count: Number(tr.children[3].dataset.value),
        total: Number(tr.children[4].dataset.value), mean: Number(tr.children[5].dataset.value),
        p95: Number(tr.children[6].dataset.value)}));
      const trend = s.charts.trend.data;
      return {
        refreshes: s.refreshes,
        chart: {x: [...trend[0]], p50: [...trend[1]], p95: [...trend[2]], rate: [...trend[3]]},
        table: {x: starts('trend-table'), count: col('trend-table', 1), p50: col('trend-table', 3),
                p95: col('trend-table', 4), rate: col('trend-table', 7)},
        bars, rows,
      };
    }""")


def test_insights_charts_match_the_api_and_move_when_a_build_finishes(ci: BuildbotCI, browser: Any,
                                                                      errors: list[str]) -> None:
    """The build-duration chart of ``pass-build`` draws exactly /api/trend's buckets (median,
    p95, failure rate), the step bars exactly /api/steps' rows, and the table views hold the
    same numbers; a new finished build moves the chart without a reload."""
    push_and_finish(ci)
    page = new_page(browser, errors)
    page.goto(ci.server.url + INSIGHTS)
    page.wait_for_selector('#connection[data-state="live"]')
    page.wait_for_selector("#steps-chart li[data-step]")
    page.evaluate("window.__notReloaded = true")

    def check() -> dict[str, Any]:
        drawn = page_numbers(page)
        trend = ci.api("/api/trend?builder=pass-build&window=3600&bucket=60")
        buckets = trend["all"]["buckets"]
        assert buckets == trend["builders"][0]["buckets"], "one builder: all is that builder"
        assert drawn["chart"]["x"] == [b["start"] for b in buckets]
        assert drawn["chart"]["p50"] == [b["p50"] for b in buckets]
        assert drawn["chart"]["p95"] == [b["p95"] for b in buckets]
        assert drawn["chart"]["rate"] == pytest.approx([100 * b["failure_rate"] for b in buckets])
        assert drawn["table"]["x"] == drawn["chart"]["x"]
        assert drawn["table"]["p50"] == drawn["chart"]["p50"]
        assert drawn["table"]["p95"] == drawn["chart"]["p95"]
        assert drawn["table"]["rate"] == pytest.approx([r / 100 for r in drawn["chart"]["rate"]])
        assert drawn["table"]["count"] == [b["count"] for b in buckets]
        steps = ci.api("/api/steps?builder=pass-build&window=3600&sort=total&limit=20")["steps"]
        want = [{k: s[k] for k in ("builder", "step", "total", "mean", "p95", "count")} for s in steps]
        assert drawn["bars"] == want
        assert drawn["rows"] == want, "the steps table holds the bars' numbers"
        assert {s["step"] for s in steps} >= {"checkout", "compile", "test"}
        return drawn

    before = check()
    builds_before = sum(before["table"]["count"])
    assert builds_before >= 1

    push_and_finish(ci)                                  # one more pass-build build finishes
    page.wait_for_function(
        "n => [...document.querySelectorAll('#trend-table tbody tr[data-start]')]"
        ".reduce((a, tr) => a + Number(tr.children[1].dataset.value), 0) === n", arg=builds_before + 1)
    page.wait_for_function(
        "n => [...document.querySelectorAll('#steps-chart li[data-step=\"compile\"]')].some((li) => Number(li.dataset.count) === n)",
        arg=builds_before + 1)
    after = check()
    assert after["refreshes"] > before["refreshes"]
    assert page.evaluate("window.__notReloaded") is True


# --------------------------------------------------------------------------------------------
# Failure summaries
# --------------------------------------------------------------------------------------------


def test_a_failed_builds_summary_shows_the_failed_step_and_its_log_tail(ci: BuildbotCI, browser: Any,
                                                                        errors: list[str]) -> None:
    """The pushlog row counts the failure and names its builder; the failed build's details
    show the failed step, its status text, its log's last lines and a link to the build on the
    Buildbot master."""
    rev = push_and_finish(ci)
    failed = ci.build_of(rev, "fail-build")
    page = new_page(browser, errors)
    page.goto(ci.server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    row = page.locator(f'tr[data-rev="{rev}"]')
    row.locator(".failures:has-text('fail-build')").wait_for()
    assert "1" in row.locator(".failures").text_content()
    assert row.locator('.status[data-state="done"]').count() == 1
    page.click(f'td.cell[data-rev="{rev}"][data-builder="fail-build"]')
    page.wait_for_selector('#details:not([hidden]) .failure li.failed-step[data-step="test"]')
    step = page.locator('#details li.failed-step[data-step="test"]')
    assert "failure" in step.text_content()
    assert FAIL_LINE in step.locator("pre.log-tail").text_content()
    assert step.locator(".state-string").text_content().strip() != ""
    links = page.locator("#details .failure a").evaluate_all("els => els.map((a) => a.href)")
    assert failed["url"] in links, (failed["url"], links)


# --------------------------------------------------------------------------------------------
# Watching a push
# --------------------------------------------------------------------------------------------


def test_watching_a_push_notifies_exactly_once_when_its_last_build_finishes(ci: BuildbotCI, browser: Any,
                                                                           errors: list[str]) -> None:
    """With the permission granted: no notification while a build of the push still runs, one
    when the last finishes (naming the failed builder), none again after a reload, which still
    shows the push as watched (local storage)."""
    rev = fresh_revision()
    ci.push(rev)
    page = new_page(browser, errors)
    page.context.grant_permissions(["notifications"], origin=ci.server.url)
    page.context.add_init_script(CAPTURE_NOTIFICATIONS)
    page.goto(ci.server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    row = page.locator(f'tr[data-rev="{rev}"]')
    row.locator('.status[data-state="running"]').wait_for()
    row.locator("button.watch").click()
    row.locator('button.watch[aria-pressed="true"]').wait_for()

    ci.release(rev, "fail-build")                       # one build left: still running
    row.locator(".failures:has-text('fail-build')").wait_for()
    assert row.locator('.status[data-state="running"]').count() == 1
    assert page.evaluate("window.__notes") == []

    ci.release(rev, "pass-build")                       # the last build: the push is done
    row.locator('.status[data-state="done"]').wait_for()
    page.wait_for_function("window.__notes.length > 0")
    notes = page.evaluate("window.__notes")
    assert len(notes) == 1, notes
    assert rev[:12] in notes[0]["title"] and "fail-build" in notes[0]["body"]
    assert page.locator("#toasts .toast").count() == 0, "no in-page fallback when the system one was shown"

    page.reload()
    page.wait_for_selector('#connection[data-state="live"]')
    row.locator('button.watch[aria-pressed="true"]').wait_for()
    page.wait_for_function(f"window.firehoseDashboard.watchChecks['{rev}'] >= 1")
    assert page.evaluate("window.__notes") == [], "a reload does not notify again"


def test_a_refused_permission_falls_back_to_a_message_in_the_page(ci: BuildbotCI, browser: Any,
                                                                  errors: list[str]) -> None:
    """Without the permission (refused), the page says it in the page instead, once."""
    rev = fresh_revision()
    ci.push(rev)
    page = new_page(browser, errors)
    page.context.add_init_script(CAPTURE_NOTIFICATIONS)
    page.context.add_init_script("Object.defineProperty(window.Notification, 'permission', {get: () => 'denied'});")
    page.goto(ci.server.url + "/")
    page.wait_for_selector('#connection[data-state="live"]')
    row = page.locator(f'tr[data-rev="{rev}"]')
    row.locator('.status[data-state="running"]').wait_for()
    row.locator("button.watch").click()
    ci.release(rev, "fail-build")
    ci.release(rev, "pass-build")
    page.wait_for_selector(f"#toasts .toast:has-text('{rev[:12]}')")
    row.locator('.status[data-state="done"]').wait_for()
    assert page.locator("#toasts .toast").count() == 1
    assert page.evaluate("window.__notes") == []


def test_insights_follow_the_stream_over_long_poll_when_websocket_is_blocked(
        start_server: Callable[..., ServerProcess], browser: Any, errors: list[str]) -> None:
    """With every WebSocket closed before it subscribes (a proxy that blocks them), the page
    says it follows over long-poll, and a finished build still moves the chart."""
    server = start_server(tokens={"bm1": "tok-bm1"})
    now = time.time()
    s = Scenario("bm1", start=now - 600)
    s.build("started", 1, "lp", "r1", started_at=now - 600, at=now - 600)
    s.build("finished", 1, "lp", "r1", result="success", started_at=now - 600, at=now - 540, duration=60)
    server.ingest(s.take())
    page = new_page(browser, errors)
    page.route_web_socket("**/ws", lambda ws: ws.close())
    page.goto(server.url + "/insights.html?builder=lp&window=3600&bucket=3600")
    page.wait_for_selector('#connection[data-state="live"][data-transport="long-poll"]')
    page.wait_for_function("window.firehoseInsights.state.charts.trend.data[0].length >= 1")
    s.build("started", 2, "lp", "r2", started_at=now - 300, at=now - 300)
    s.build("finished", 2, "lp", "r2", result="failure", started_at=now - 300, at=now - 200, duration=100)
    server.ingest(s.take())
    page.wait_for_function(
        "[...document.querySelectorAll('#trend-table tbody tr[data-start]')]"
        ".reduce((a, tr) => a + Number(tr.children[6].dataset.value), 0) === 1")
    trend = json.loads(http_get(server.url + "/api/trend?builder=lp&window=3600&bucket=3600")[1])
    drawn = page.evaluate("window.firehoseInsights.state.charts.trend.data[2]")
    assert drawn == [b["p95"] for b in trend["all"]["buckets"]]
