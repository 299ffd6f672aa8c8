"""checkConfig messages, and the tracker's coherent ordering of out-of-order Buildbot messages."""

from __future__ import annotations

import collections
import datetime
from typing import Any

import pytest
from buildbot.config.errors import capture_config_errors
from twisted.internet import defer

from buildbot_plugin import convert
from buildbot_plugin.reporter import FirehoseReporter
from buildbot_plugin.tracker import Tracker
from firehose.schema import validate_event


def errors_of(**kwargs: Any) -> list[str]:
    args = {"url": "http://127.0.0.1:8080", "token": "t", **kwargs}
    with capture_config_errors(raise_on_error=False) as errors:
        FirehoseReporter(**args)
    return errors.errors


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"url": "ftp://x"}, "url must be an http:// or https:// URL"),
        ({"url": "127.0.0.1:8080"}, "url must be an http:// or https:// URL"),
        ({"url": None}, "url is required"),
        ({"url": "http://host:99999"}, "invalid port"),
        ({"token": None}, "token is required"),
        ({"token": "  "}, "token is required"),
        ({"master_name": "bad name!"}, "master_name must match"),
        ({"deny_patterns": ["(unclosed"]}, "bad regular expression '(unclosed'"),
        ({"extra_deny_patterns": "password"}, "must be a list of strings"),
        ({"logs": "yes"}, "logs must be True or False"),
        ({"flush_interval": -0.1}, "flush_interval must be a number of seconds from 0 to 60"),
        ({"flush_interval": "0.05"}, "flush_interval must be a number of seconds from 0 to 60"),
        ({"batch_max_bytes": 4 * 1024 * 1024}, "1 MiB"),
        ({"no_such_option": 1}, "unknown option(s) no_such_option"),
        ({"url": "http://127.0.0.1:1, ftp://x"}, "url must be an http:// or https:// URL with a host, got 'ftp://x'"),
        ({"url": ["http://127.0.0.1:1", "http://h:99999"]}, "invalid port: 'http://h:99999'"),
        ({"url": ["http://127.0.0.1:1", 5]}, "url is required"),
        ({"url": []}, "url is required"),
        ({"url": " , "}, "url is required"),
        ({"url": "http://127.0.0.1:1 http://127.0.0.1:1/"}, "same server twice"),
    ],
)
def test_bad_configuration_is_reported_clearly(kwargs: dict[str, Any], needle: str) -> None:
    """Each mistake yields one message that names the option and what is expected."""
    errors = errors_of(**kwargs)
    assert any(needle in e for e in errors), errors


def test_good_configuration_passes() -> None:
    """The documented options are accepted, including a secret token."""
    from buildbot.plugins import util

    assert errors_of(token=util.Secret("firehose_token"), master_name="ci-1", logs=True,
                     extra_deny_patterns=["^internal_"], spool_max_bytes=10_000_000) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080,http://127.0.0.1:8081",
        "http://127.0.0.1:8080, http://127.0.0.1:8081  https://127.0.0.1:8082/",
        ["http://127.0.0.1:8080", "http://127.0.0.1:8081"],
        ("http://127.0.0.1:8080",),
    ],
)
def test_several_urls_are_accepted(url: Any) -> None:
    """One URL, several in a list or tuple, or several in one string separated by commas
    and/or spaces are all valid ``url`` values (each is checked)."""
    assert errors_of(url=url) == []


def test_split_urls_keeps_the_given_order() -> None:
    """The failover order is the order the URLs are written in, whatever the separators."""
    from buildbot_plugin.reporter import split_urls

    assert split_urls("http://a:1, http://b:2 http://c:3,") == ["http://a:1", "http://b:2", "http://c:3"]
    assert split_urls(["http://a:1,http://b:2", "http://c:3"]) == ["http://a:1", "http://b:2", "http://c:3"]
    assert split_urls(None) == [] and split_urls(["http://a:1", None]) == []


def test_entry_point_is_registered() -> None:
    """``from buildbot.plugins import reporters`` finds the reporter (setup.py entry point)."""
    from buildbot.plugins import reporters

    assert reporters.FirehoseReporter is FirehoseReporter


T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class FakeData:
    """Just enough of ``master.data.get`` for the tracker, counting calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.db: dict[tuple[Any, ...], Any] = {
            ("builders",): [{"builderid": 1, "name": "linux", "tags": ["t"]}],
            ("workers",): [{"workerid": 1, "name": "w1"}],
            ("builds", 1, "properties"): {"branch": ("main", "Build"), "password": ("p", "x")},
        }

    def get(self, path: tuple[Any, ...], **kw: Any) -> defer.Deferred[Any]:
        self.calls.append(path)
        return defer.succeed(self.db.get(tuple(path)))


def _build(**kw: Any) -> dict[str, Any]:
    b = {"buildid": 1, "builderid": 1, "number": 1, "buildrequestid": 1, "workerid": 1, "masterid": 1,
         "started_at": T0, "complete_at": None, "complete": False, "results": None, "state_string": "x",
         "properties": {}}
    b.update(kw)
    return b


def _run(tracker: Tracker, messages: list[tuple[tuple[str, ...], Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, payload in messages:
        d = tracker.handle(key, payload)
        out.extend(d.result)
    return out


def test_tracker_makes_out_of_order_messages_coherent() -> None:
    """Step and property messages that precede ``builds/N/new`` are held and replayed after
    ``build.started``; each build is announced once; one data call per build."""
    data = FakeData()
    t = Tracker(fetch=data.get, redactor=convert.Redactor(), seconds=lambda: 0.0, buildbot_url="http://bb/")
    t.preload()
    data.calls.clear()
    step = {"stepid": 1, "buildid": 1, "name": "worker_preparation", "number": 0, "results": None,
            "started_at": T0, "complete_at": None, "urls": [], "state_string": "pending"}
    bs = {"bsid": 1, "reason": "r", "sourcestamps": [{"branch": "main", "revision": "abc", "repository": "r",
                                                      "project": "p", "codebase": ""}],
          "submitted_at": 1767225600, "complete": False, "results": None}
    br = {"buildrequestid": 1, "buildsetid": 1, "builderid": 1, "claimed": False, "complete": False, "results": -1,
          "submitted_at": T0, "claimed_at": None, "complete_at": None}
    events = _run(t, [
        (("buildsets", "1", "new"), bs),
        (("buildrequests", "1", "new"), br),
        (("steps", "1", "new"), step),
        (("steps", "1", "started"), step),
        (("builds", "1", "properties", "update"), {"branch": ("main", "Build"), "password": ("p", "x")}),
        (("builds", "1", "update"), _build(state_string="preparing worker")),
        (("builds", "1", "new"), _build(state_string="starting")),
        (("steps", "1", "finished"), {**step, "results": 0, "complete_at": T0}),
        (("builds", "1", "finished"), _build(results=0, complete=True, complete_at=T0)),
    ])
    types = [ty for ty, _ in events]
    assert types == ["buildset.submitted", "request.submitted", "build.started", "step.started",
                     "build.updated", "step.finished", "build.finished"]
    for ty, d in events:
        validate_event({"master": "m", "incarnation": "i", "seq": 1, "type": ty, "time": 0, "data": d})
    started = events[2][1]
    assert started["builder"] == "linux" and started["worker"] == "w1" and started["branch"] == "main"
    assert started["buildsetid"] == 1 and started["url"] == "http://bb/#/builders/1/builds/1"
    assert events[4][1]["properties"] == {"branch": "main", "password": "<redacted>"}
    assert events[3][1]["builder"] == "linux"
    assert data.calls == [("builds", 1, "properties")]


@pytest.mark.parametrize("newest, lossy, fetched", [([], False, False), ([{"buildid": 1}], False, True),
                                                    ([], True, True), (None, False, True),
                                                    (collections.UserList([]), False, False)])
def test_tracker_fetches_final_properties_only_when_it_may_have_missed_some(newest: Any, lossy: bool,
                                                                             fetched: bool) -> None:
    """A build created after the plugin started (newer than the newest build at preload) had
    every properties update merged: it finishes without a data-API call, with the same
    properties.  An older build, any build once a message was lost, or when the newest build
    could not be found, is fetched.  (The real data API answers a ``UserList``.)"""
    data = FakeData()
    data.db[("builds",)] = newest
    data.db[("builds", 1, "properties")] = {"branch": ("main", "Build"), "late": ("x", "Step")}
    t = Tracker(fetch=data.get, redactor=convert.Redactor(), seconds=lambda: 0.0)
    t.preload()
    t.lossy = lossy
    data.calls.clear()
    events = _run(t, [
        (("builds", "1", "new"), _build()),
        (("builds", "1", "properties", "update"), {"branch": ("main", "Build")}),
        (("builds", "1", "properties", "update"), {"late": ("x", "Step")}),
        (("builds", "1", "finished"), _build(results=0, complete=True, complete_at=T0)),
    ])
    assert events[-1][0] == "build.finished"
    assert events[-1][1]["properties"] == {"branch": "main", "late": "x"}
    assert (("builds", 1, "properties") in data.calls) == fetched


def test_tracker_buildset_completed_keeps_scheduler() -> None:
    """Buildbot's ``buildsets/N/complete`` has no ``scheduler`` (its ``new`` has): the completed
    event still names the scheduler (found with the real server, test_plugin_realserver)."""
    data = FakeData()
    t = Tracker(fetch=data.get, redactor=convert.Redactor(), seconds=lambda: 0.0)
    t.preload()
    bs = {"bsid": 1, "reason": "r", "scheduler": "on-change", "sourcestamps": [], "submitted_at": 1767225600,
          "complete": False, "complete_at": None, "results": None}
    done = {k: v for k, v in bs.items() if k != "scheduler"}
    done.update(complete=True, complete_at=T0, results=0)
    events = _run(t, [(("buildsets", "1", "new"), bs), (("buildsets", "1", "complete"), done)])
    assert [(ty, d["scheduler"]) for ty, d in events] == [("buildset.submitted", "on-change"),
                                                          ("buildset.completed", "on-change")]


def test_tracker_fetches_a_build_held_too_long() -> None:
    """If the build's own message never comes, tick() fetches it after hold_seconds."""
    data = FakeData()
    data.db[("builds", 1)] = _build()
    now = [0.0]
    t = Tracker(fetch=data.get, redactor=convert.Redactor(), seconds=lambda: now[0], hold_seconds=2.0)
    t.preload()
    step = {"stepid": 1, "buildid": 1, "name": "s", "number": 0, "results": None, "started_at": T0,
            "complete_at": None, "urls": []}
    assert _run(t, [(("steps", "1", "started"), step)]) == []
    assert t.tick().result == []
    now[0] = 3.0
    assert [ty for ty, _ in t.tick().result] == ["build.started", "step.started"]


def _checkconfig(tmp_path: Any, text: str) -> Any:
    import os
    import subprocess
    import sys

    cfg = tmp_path / "master.cfg"
    cfg.write_text(text)
    script = "import sys; from buildbot.scripts.runner import run; sys.argv[0] = 'buildbot'; run()"
    return subprocess.run([sys.executable, "-c", script, "checkconfig", str(cfg)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_master_cfg_example_passes_checkconfig_and_bad_url_fails(tmp_path: Any) -> None:
    """``buildbot checkconfig`` accepts master.cfg.example and explains a broken url."""
    import pathlib

    text = (pathlib.Path(__file__).parents[2] / "master.cfg.example").read_text()
    good = _checkconfig(tmp_path, text)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _checkconfig(tmp_path, text.replace('url="http://127.0.0.1:8080"', 'url="127.0.0.1:8080"'))
    assert bad.returncode != 0
    assert "FirehoseReporter: url must be an http:// or https:// URL" in bad.stdout + bad.stderr
