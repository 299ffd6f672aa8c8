"""Unit tests of the pure conversion functions, the redactor and the stdio filter."""

from __future__ import annotations

import datetime

from buildbot_plugin import convert
from firehose.schema import validate_event

UTC = datetime.UTC


def _event(type_: str, data: dict) -> dict:
    return validate_event({"master": "m", "incarnation": "i", "seq": 1, "type": type_, "time": 1.0, "data": data})


BUILD = {
    "builderid": 3,
    "buildid": 7,
    "buildrequestid": 11,
    "complete": True,
    "complete_at": datetime.datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC),
    "masterid": 1,
    "number": 42,
    "properties": {},
    "results": 2,
    "started_at": datetime.datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC),
    "state_string": "failed test",
    "workerid": 5,
}
STAMPS = [{"repository": "https://git.invalid/r.git", "branch": "main", "revision": "abc", "project": "p",
           "codebase": "", "ssid": 1}]


def test_epoch_accepts_every_time_shape() -> None:
    """datetimes (aware or naive), ints and None all become epoch seconds or None."""
    aware = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    assert convert.epoch(aware) == 1767225600
    assert convert.epoch(aware.replace(tzinfo=None)) == 1767225600
    assert convert.epoch(1767225600) == 1767225600
    assert convert.epoch(None) is None
    assert convert.epoch("yesterday") is None


def test_plain_makes_payloads_json_safe() -> None:
    """Tuples, datetimes, bytes and dataclasses survive instead of becoming None."""
    import dataclasses

    @dataclasses.dataclass
    class M:
        a: int
        when: datetime.datetime

    out = convert.plain({"t": (1, 2), "b": b"x", "m": M(1, datetime.datetime(2026, 1, 1, tzinfo=UTC)), "o": object})
    assert out["t"] == [1, 2] and out["b"] == "x"
    assert out["m"] == {"a": 1, "when": 1767225600}
    assert isinstance(out["o"], str)


def test_plain_keeps_integers_past_64_bits_as_strings() -> None:
    """A property holding an integer past 64 bits is sent as its digits, not dropped with its
    event (JSON encoders and the server refuse such an integer)."""
    from firehose.event import dumps

    out = convert.plain({"big": 2**64, "neg": -(2**63) - 1, "edge": 2**63 - 1, "flag": True})
    assert out == {"big": str(2**64), "neg": str(-(2**63) - 1), "edge": 2**63 - 1, "flag": True}
    dumps(out)


def test_result_fields() -> None:
    """Codes map to names; unfinished (None or -1) maps to None."""
    assert convert.result_fields(0) == {"results": 0, "result": "success"}
    assert convert.result_fields(6) == {"results": 6, "result": "cancelled"}
    assert convert.result_fields(-1) == {"results": None, "result": None}
    assert convert.result_fields(None) == {"results": None, "result": None}


def test_build_data_has_every_field_and_is_valid() -> None:
    """A build event names builder, worker, times, result, properties, sources and a link."""
    r = convert.Redactor()
    props = r.properties({"got_revision": ("def", "Source"), "api_token": ("t0k3n", "x"), "n": (1, "y")})
    data = convert.build_data(
        BUILD, builder="linux", tags=["a"], worker="w1", properties=props, stamps=STAMPS, buildsetid=9,
        url=convert.build_url("http://bb.invalid", 3, 42),
    )
    _event("build.finished", data)
    assert data["builder"] == "linux" and data["builderid"] == 3 and data["number"] == 42
    assert data["worker"] == "w1" and data["workerid"] == 5
    assert data["result"] == "failure" and data["results"] == 2
    assert data["started_at"] == 1767225600 and data["duration"] == 30
    assert data["state"] == "failed test"
    assert data["properties"] == {"got_revision": "def", "api_token": "<redacted>", "n": 1}
    assert data["branch"] == "main" and data["revision"] == "def"  # got_revision wins
    assert data["repository"] == "https://git.invalid/r.git" and data["project"] == "p"
    assert data["buildsetid"] == 9 and data["buildrequestid"] == 11
    assert data["url"] == "http://bb.invalid/#/builders/3/builds/42"
    assert data["tags"] == ["a"]


def test_build_url_needs_a_base() -> None:
    """No buildbotURL, no link."""
    assert convert.build_url(None, 1, 2) is None
    assert convert.build_url("http://x/", 1, 2) == "http://x/#/builders/1/builds/2"


def test_step_data_copies_build_identity() -> None:
    """Steps carry the build's builder/branch so the same filters select them; URLs kept."""
    build = convert.build_data(BUILD, builder="linux", stamps=STAMPS)
    step = {"stepid": 4, "buildid": 7, "name": "test", "number": 1, "results": 0, "state_string": "ok",
            "started_at": datetime.datetime(2026, 1, 1, tzinfo=UTC),
            "complete_at": datetime.datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC),
            "urls": [{"name": "artifact", "url": "http://a.invalid/x"}], "hidden": False}
    data = convert.step_data(step, build=build)
    _event("step.finished", data)
    assert data["builder"] == "linux" and data["branch"] == "main" and data["build_number"] == 42
    assert data["duration"] == 2 and data["result"] == "success"
    assert data["urls"] == [{"name": "artifact", "url": "http://a.invalid/x"}]


def test_request_and_buildset_data() -> None:
    """Requests carry builder, reason, source stamps and queue times."""
    bs = convert.buildset_data({"bsid": 9, "reason": "nightly", "scheduler": "s", "sourcestamps": STAMPS,
                                "submitted_at": 1767225600, "complete": False, "results": None})
    _event("buildset.submitted", bs)
    assert bs["branch"] == "main" and bs["buildsetid"] == 9
    br = {"buildrequestid": 11, "buildsetid": 9, "builderid": 3, "claimed": True, "complete": False,
          "results": -1, "submitted_at": datetime.datetime(2026, 1, 1, tzinfo=UTC),
          "claimed_at": datetime.datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC), "complete_at": None}
    data = convert.request_data(br, builder="linux", buildset=bs)
    _event("request.claimed", data)
    assert data["reason"] == "nightly" and data["claimed_at"] == 1767225605 and data["result"] is None
    assert data["revision"] == "abc"


def test_change_and_worker_data() -> None:
    """Changes carry author/branch/revision/files/comments/revlink; properties redacted."""
    change = {"changeid": 1, "author": "ann", "committer": "ann", "branch": "main", "revision": "abc",
              "files": ["a.c"], "comments": "fix", "revlink": "http://r/abc", "when_timestamp": 1767225600,
              "repository": "r", "project": "p", "codebase": "", "category": None, "parent_changeids": [],
              "properties": {"secret_thing": ("x", "Change")}}
    data = convert.change_data(change, convert.Redactor())
    _event("change.new", data)
    assert data["files"] == ["a.c"] and data["revlink"] == "http://r/abc"
    assert data["properties"] == {"secret_thing": "<redacted>"}
    w = convert.worker_data({"workerid": 2, "name": "w1", "connected_to": [{"masterid": 1}],
                             "workerinfo": {"host": "h", "version": "4.3.0", "environ": {"X": "1"}}},
                            connected=True)
    _event("worker.connected", w)
    assert w["worker"] == "w1" and w["connected"] is True and "environ" not in w["info"]


def test_redactor_patterns_and_secret_scrubbing() -> None:
    """Deny patterns are case-insensitive substrings; known secret values vanish from strings."""
    r = convert.Redactor()
    for name in ("PASSWORD", "db_passwd", "GITHUB_TOKEN", "client_secret", "ssh_key", "aws_credentials"):
        assert r.denied(name), name
    assert not r.denied("branch")
    custom = convert.Redactor(["^internal_"])
    assert custom.denied("internal_x") and not custom.denied("token")
    r.add_secrets(["s3cr3t-value", "ab"])  # too short values are ignored
    assert r.scrub("use s3cr3t-value now") == "use <secret> now"
    assert r.scrub("ab") == "ab"
    assert r.scrub_all({"k": ["x s3cr3t-value"]}) == {"k": ["x <secret>"]}


def test_stdio_filter_removes_environment_across_chunks() -> None:
    """The environment dump is removed even when split between two fetched chunks."""
    f = convert.StdioFilter()
    r = convert.Redactor()
    first = "hmake test\nh environment:\nh  HOME=/root\nh  API_TOKEN=abc\n"
    second = "h  MULTI=line1\nh  PATH=/bin\nh using PTY: False\nohello\nerr\n"
    lines1, streams1, removed1 = convert.split_log_lines(first, log_type="s", stdio=f, redactor=r)
    lines2, streams2, removed2 = convert.split_log_lines(second, log_type="s", stdio=f, redactor=r)
    assert lines1 == ["make test", " environment:"] and removed1 == 2
    assert lines2 == [" using PTY: False", "hello", "rr"] and removed2 == 2
    assert streams2 == "hoe"
    text, streams, _ = convert.split_log_lines("a\nb\n", log_type="t", stdio=None, redactor=r)
    assert text == ["a", "b"] and streams is None


def test_sanitize_master_name() -> None:
    """Buildbot's ``host:/path`` master name becomes a valid firehose master name."""
    import re

    from firehose.schema import MASTER_NAME_PATTERN

    name = convert.sanitize_master_name("buildhost:/srv/buildbot/master")
    assert name == "buildhost-srv-buildbot-master"
    assert re.match(MASTER_NAME_PATTERN, name)
    assert re.match(MASTER_NAME_PATTERN, convert.sanitize_master_name(":::"))
