"""Property tests of redaction: whatever surrounds a secret, it never reaches an encoded event.

Each test builds event data with the real conversion code the reporter uses (``convert`` and
the ``Tracker`` for logs), passes it through the reporter's own ``_emit`` (which scrubs, checks
and encodes with ``firehose.event.dumps``) and searches the encoded bytes.
"""

from __future__ import annotations

import re
import string
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet import defer

from buildbot_plugin import convert
from buildbot_plugin.reporter import FirehoseReporter
from buildbot_plugin.tracker import Tracker
from firehose.event import dumps

# Printable ASCII with every regex metacharacter; no '<' or '>', and no secret that is part of
# a marker's own word ("secret", "redacted"), so the search below can never find a marker.
_SECRET_CHARS = "".join(c for c in string.printable if c not in "<>\n\r\t\x0b\x0c")
_MARKERS = ("<secret>", "<redacted>")
secrets = st.text(_SECRET_CHARS, min_size=6, max_size=40).filter(
    lambda s: len(s.strip()) >= 6 and not any(s.strip() in m for m in _MARKERS)
)
multiline_secrets = st.lists(secrets, min_size=1, max_size=4).map("\n".join)
surrounding = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def _fragment(value: str) -> bytes:
    """How ``value`` looks inside an encoded JSON string."""
    return dumps(value)[1:-1]


class _Capture:
    """Stands in for the reporter around its ``_emit``: keeps the encoded bodies."""

    def __init__(self, redactor: convert.Redactor) -> None:
        self.redactor = redactor
        self.master_name, self.incarnation, self.seq = "m", "i", 0
        self.outbox = self
        self.bodies: list[bytes] = []

    def put(self, item: Any) -> None:
        self.bodies.append(item.body)

    def record_unsequenced_drop(self, reason: str, count: int = 1) -> None:
        raise AssertionError(f"event dropped as invalid: {reason}")


def _emit(redactor: convert.Redactor, events: list[tuple[str, dict[str, Any]]]) -> bytes:
    cap = _Capture(redactor)
    for type_, data in events:
        FirehoseReporter._emit(cap, type_, data, 1.0)  # type: ignore[arg-type]
    return b"\n".join(cap.bodies)


BUILD = {"buildid": 1, "builderid": 1, "number": 1, "buildrequestid": 1, "workerid": 1, "masterid": 1,
         "started_at": 1767225600, "complete_at": None, "complete": False, "results": None,
         "state_string": "building", "properties": {}}
STAMP = {"repository": "https://git.example/r.git", "branch": "main", "revision": "abc", "project": "p",
         "codebase": "", "ssid": 1}


def _entity_events(redactor: convert.Redactor, text: str) -> list[tuple[str, dict[str, Any]]]:
    """Build, step and change events carrying ``text`` in every kind of string field."""
    props = {"plain": (text, "Build"), "nested": ({"a": [text, {"b": text}]}, "Build"), text: ("v", "Build")}
    build = convert.build_data(
        {**BUILD, "state_string": text}, builder="b", worker="w", properties=redactor.properties(props),
        stamps=[{**STAMP, "repository": text}],
    )
    step = convert.step_data({"stepid": 1, "buildid": 1, "name": text, "number": 0, "state_string": text,
                              "urls": [{"name": text, "url": text}]}, build=build)
    change = convert.change_data({"changeid": 1, "author": text, "comments": text, "files": [text],
                                  "revlink": text, "repository": text, "branch": "main",
                                  "properties": props}, redactor)
    return [("build.updated", build), ("step.started", step), ("change.new", change)]


@given(secret=secrets, pre=surrounding, post=surrounding)
def test_registered_secret_never_appears_in_any_string_field(secret: str, pre: str, post: str) -> None:
    """A registered secret (regex metacharacters included) embedded anywhere in any string of a
    build, step or change event (values, nested values, keys, URLs, status) is never encoded."""
    r = convert.Redactor(secret_values=[secret])
    baseline = _emit(convert.Redactor(), _entity_events(convert.Redactor(), pre + post))
    assume(_fragment(secret) not in baseline)
    body = _emit(r, _entity_events(r, pre + secret + post))
    assert _fragment(secret) not in body


DENIED_WORDS = ["password", "passwd", "pass", "pwd", "auth", "authorization", "oauth", "cookie", "session",
                "private_key", "privateKey", "private key", "api key", "apiKey", "credential", "creds", "token",
                "secret", "key", "passphrase"]
denied_names = st.builds(
    lambda pre, word, post, case: case(pre + word + post),
    st.sampled_from(["", "db_", "x-", "GITHUB_", "my.", "a "]),
    st.sampled_from(DENIED_WORDS),
    st.sampled_from(["", "_value", "-2", ".txt", " x"]),
    st.sampled_from([str, str.upper, str.lower]),
)
ORDINARY = ["buildername", "got_revision", "branch", "author", "owner", "passed", "compass", "count",
            "repository", "scheduler", "workername", "db", "coauthor", "reason"]


def _tree(value: str) -> st.SearchStrategy[Any]:
    """Nested dicts/lists whose denied keys hold ``value`` and whose ordinary keys do not."""
    leaf = st.one_of(st.text(string.ascii_lowercase, max_size=8), st.integers(0, 99), st.none())
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(ORDINARY), inner, max_size=4).flatmap(
                lambda d: st.dictionaries(denied_names, st.just(value), max_size=3).map(lambda e: {**d, **e})
            ),
        ),
        max_leaves=20,
    )


@given(data=st.data(), value=secrets)
def test_deny_listed_values_never_appear_at_any_depth(data: st.DataObject, value: str) -> None:
    """A value stored under a deny-listed name (case, separators and camelCase varied) at any
    depth of a property value, or as a deny-listed property itself, is never encoded."""
    assume(not any(value in w or w in value.lower() for w in ORDINARY))
    assume(any(c not in string.ascii_lowercase for c in value))  # ordinary leaves are lowercase
    tree = data.draw(_tree(value))
    name = data.draw(denied_names)
    r = convert.Redactor()
    props = {"config": (tree, "Build"), name: (value, "Build"), "got_revision": ("abc", "Build")}
    build = convert.build_data(BUILD, builder="b", properties=r.properties(props))
    change = convert.change_data({"changeid": 1, "properties": props}, r)
    baseline = _emit(r, [("build.updated", convert.build_data(BUILD, builder="b"))])
    assume(_fragment(value) not in baseline)
    body = _emit(r, [("build.updated", build), ("change.new", change)])
    assert _fragment(value) not in body


def test_nested_values_past_the_depth_bound_are_redacted_whole() -> None:
    """A password nested deeper than ``MAX_DEPTH`` is not walked but redacted with its subtree."""
    deep: Any = {"password": "hunter2-deep"}
    for _ in range(convert.MAX_DEPTH + 5):
        deep = {"x": [deep]}
    body = _emit(convert.Redactor(), [("build.updated", convert.build_data(
        BUILD, builder="b", properties=convert.Redactor().properties({"config": deep})))])
    assert b"hunter2-deep" not in body and b"<redacted>" in body


_USERINFO_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=%:@"
passwords = st.text(_USERINFO_CHARS, min_size=6, max_size=30)


@given(user=st.text(_USERINFO_CHARS.replace(":", ""), max_size=12), password=passwords,
       scheme=st.sampled_from(["https", "http", "ssh", "git+ssh", "svn"]),
       host=st.sampled_from(["example.invalid", "127.0.0.1:8080", "[::1]"]),
       path=st.sampled_from(["", "/", "/o/r.git", "?q=1", "#top"]), pre=surrounding, post=surrounding)
def test_url_credentials_never_appear(user: str, password: str, scheme: str, host: str, path: str,
                                      pre: str, post: str) -> None:
    """The password of ``scheme://user:password@host`` anywhere in any string field (repository,
    revlink, comments, nested properties, step URLs, status text, log lines) is never encoded,
    whatever text is around the URL."""
    url = f"{scheme}://{user}:{password}@{host}{path}"
    r = convert.Redactor()
    baseline = _emit(r, _entity_events(r, pre + post))
    assume(_fragment(password) not in baseline)
    lines, _, _ = convert.split_log_lines(f"o{pre}{url}{post}\n".replace("\n", " ") + "\n",
                                          log_type="s", stdio=convert.StdioFilter(), redactor=r)
    events = _entity_events(r, pre + url + post)
    events.append(("log.lines", {"logid": 1, "stepid": 1, "buildid": 1, "builder": "b", "lines": lines,
                                 "streams": "o", "first_line": 0, "num_lines": 1}))
    assert _fragment(password) not in _emit(r, events)


# -- logs, through the real tracker ------------------------------------------------------------

class _LogData:
    """``master.data.get`` for one build with one step and one log of ``lines``."""

    def __init__(self, lines: list[str], log_type: str) -> None:
        self.lines = lines
        self.log = {"logid": 1, "stepid": 1, "name": "stdio", "slug": "stdio", "type": log_type, "num_lines": 0}

    def get(self, path: tuple[Any, ...], **kw: Any) -> defer.Deferred[Any]:
        path = tuple(path)
        if path == ("builders",):
            return defer.succeed([{"builderid": 1, "name": "b", "tags": []}])
        if path[0] == "logs" and path[2:] == ("contents",):
            chunk = self.lines[kw["offset"]:kw["offset"] + kw["limit"]]
            return defer.succeed({"content": "".join(line + "\n" for line in chunk)} if chunk else None)
        return defer.succeed(None)


def _log_events(redactor: convert.Redactor, lines: list[str], appends: list[int], per_event: int,
                log_type: str = "s") -> list[tuple[str, dict[str, Any]]]:
    """Run a log through the tracker: appended at the ``appends`` line counts, ticked after each."""
    data = _LogData(lines, log_type)
    t = Tracker(fetch=data.get, redactor=redactor, seconds=lambda: 0.0, logs=True,
                log_lines_per_second=1e9, log_burst=10**9, log_lines_per_event=per_event)
    out: list[tuple[str, dict[str, Any]]] = []
    t.preload()
    step = {"stepid": 1, "buildid": 1, "name": "s", "number": 0, "state_string": "", "urls": []}
    for key, payload in ((("builds", "1", "new"), BUILD), (("steps", "1", "started"), step),
                         (("logs", "1", "new"), data.log)):
        out.extend(t.handle(key, payload).result)
    for n in [*sorted(set(appends)), len(lines)]:
        out.extend(t.handle(("logs", "1", "append"), {**data.log, "num_lines": n}).result)
        out.extend(t.tick().result)
    out.extend(t.handle(("logs", "1", "finished"), {**data.log, "num_lines": len(lines)}).result)
    return out


def _sent_lines(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [line for ty, d in events if ty == "log.lines" for line in d["lines"]]


env_names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True)
env_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=40)


@given(env=st.dictionaries(env_names, env_values, max_size=6), name=env_names, value=multiline_secrets,
       cut=st.lists(st.integers(0, 60), max_size=4), per_event=st.integers(1, 7))
def test_environment_dump_never_sent_whatever_the_values_hold(
    env: dict[str, str], name: str, value: str, cut: list[int], per_event: int
) -> None:
    """A worker environment dump, with multi-line values laid out any way (an SSH key), is
    dropped whole, continuation lines included, however the log is split into appends and
    fetches; the headers and output around it are still sent."""
    env = {**env, name: "-----BEGIN KEY-----\n" + value + "\n-----END KEY-----"}
    dump = " environment:\n" + "".join(f"  {k}={v}\n" for k, v in sorted(env.items()))
    assume(not any(re.match(r" (using PTY: |writing \d+ bytes to stdin$)", part) for part in dump.split("\n")))
    headers = ["bash -c make", " in dir /build", *dump.rstrip("\n").split("\n"), " using PTY: False"]
    lines = [*("h" + line for line in headers), "ohello world", "hprogram finished with exit code 0"]
    events = _log_events(convert.Redactor(), lines, cut, per_event)
    sent = _sent_lines(events)
    assert sent == ["bash -c make", " in dir /build", " environment:", " using PTY: False", "hello world",
                    "program finished with exit code 0"]
    body = _emit(convert.Redactor(), events)
    # What the events hold anyway (field names such as "master", the headers around the dump).
    baseline = _emit(convert.Redactor(), _log_events(convert.Redactor(), [lines[0], *lines[-3:]], [], 1))
    for part in value.split("\n"):
        if _fragment(part.strip()) not in baseline:
            assert _fragment(part.strip()) not in body


@given(secret=secrets, shift=st.integers(-45, 5), tail=st.integers(0, 50), stdio=st.booleans())
def test_secret_across_the_truncation_cut_leaves_nothing(secret: str, shift: int, tail: int, stdio: bool) -> None:
    """A registered secret in a long line, wherever it sits relative to the 2000-character cut,
    leaves no piece of itself in the line sent (scrubbing runs before truncation, and the cut
    never splits the marker)."""
    assume("~" not in secret)
    start = 2000 + shift
    line = "~" * start + secret + "~" * tail
    r = convert.Redactor(secret_values=[secret])
    content = ("o" if stdio else "") + line + "\n"
    lines, _, _ = convert.split_log_lines(content, log_type="s" if stdio else "t",
                                          stdio=convert.StdioFilter() if stdio else None, redactor=r)
    leftover = lines[0].replace("~", "").replace("…", "").replace(convert.SECRET, "")
    assert leftover.strip() == ""  # surrounding whitespace is not part of a secret
    assert len(lines[0]) <= 2001
    events = [("log.lines", {"logid": 1, "stepid": 1, "buildid": 1, "builder": "b", "lines": lines,
                             "first_line": 0, "num_lines": 1})]
    baseline = _emit(r, [("log.lines", {**events[0][1], "lines": ["~"]})])
    assume(_fragment(secret[:4]) not in baseline)
    assert _fragment(secret[:4]) not in _emit(r, events)


@given(secret=st.one_of(secrets, multiline_secrets), filler=st.lists(st.text(string.ascii_lowercase + " ",
       max_size=12), min_size=1, max_size=12), at=st.integers(0, 11), splits=st.lists(st.integers(1, 39),
       max_size=3), per_event=st.integers(1, 6), appends=st.lists(st.integers(0, 40), max_size=3))
def test_secret_split_over_lines_and_fetches_never_leaves(
    secret: str, filler: list[str], at: int, splits: list[int], per_event: int, appends: list[int]
) -> None:
    """A registered secret (possibly multi-line) that Buildbot stored over several lines (split
    at arbitrary points, as it does past 4096 characters), fetched in chunks of any size, is
    never sent, neither whole nor in pieces on consecutive lines."""
    at = min(at, len(filler) - 1)
    text = filler[at] + secret + filler[at]
    for pos in sorted(set(splits), reverse=True):
        if pos < len(text):
            text = text[:pos] + "\n" + text[pos:]
    block = text.split("\n")
    raw = filler[:at] + block + filler[at + 1:]
    lines = ["o" + line for line in raw]
    first, last = at, at + len(block)  # one write: Buildbot appends the split pieces together
    appends = [a for a in appends if not first < a < last]
    r = convert.Redactor(secret_values=[secret])
    squash = secret.replace("\n", "")
    assume(squash not in "".join(filler))
    sent = _sent_lines(_log_events(r, lines, appends, per_event))
    assert len(sent) == len(lines)
    assert squash not in "".join(sent)


@given(lines=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
       max_size=80), max_size=8), secret=secrets)
def test_ordinary_log_lines_survive_unchanged(lines: list[str], secret: str) -> None:
    """Log lines that hold no secret and no URL credentials are sent exactly as written."""
    joined = "\n".join(lines)
    assume(not re.search("\n?".join(map(re.escape, secret.strip())), joined))
    assume(not re.search(r"://[^/?#\s]*@", joined))
    r = convert.Redactor(secret_values=[secret])
    sent, streams, removed = convert.split_log_lines("".join(line + "\n" for line in lines), log_type="t",
                                                     stdio=None, redactor=r)
    assert sent == lines and removed == 0


def test_ordinary_properties_and_urls_are_not_over_redacted() -> None:
    """Plain properties (``buildername``, ``got_revision``, ``author``, ``passed`` ...) and
    nested ordinary values, and URLs without credentials, survive unchanged."""
    r = convert.Redactor(secret_values=["s3cr3t-value"])
    props = {"buildername": "linux", "got_revision": "abc123", "branch": "main", "author": "Ann <ann@x.invalid>",
             "coauthor": "Bob", "owner": "ann", "passed": 3, "compass": "north", "scheduler": "force",
             "repository": "https://github.com/o/r.git", "nested": {"author": "x", "count": [1, 2]},
             "email": "mail ann@x.invalid about http://host/a@b"}
    assert r.properties({k: (v, "Build") for k, v in props.items()}) == props
    assert r.scrub_all(props) == props
    for name in ("author", "coauthor", "passed", "compass", "bypass", "buildername", "got_revision",
                 "workername", "scheduler", "repository", "reason", "owner", "authority"):
        assert not r.denied(name), name
    for name in ("pass", "DB_PASS", "dbPass", "pwd", "auth", "oauth_token", "Authorization", "authentication",
                 "cookie", "SESSION_ID", "private key", "privateKey", "api key", "apiKey", "credential",
                 "creds", "GITHUB_TOKEN", "client_secret", "ssh_key", "passphrase"):
        assert r.denied(name), name
    assert r.scrub("clone https://tok:x-oauth@github.com/o/r") == "clone https://<redacted>@github.com/o/r"


def test_a_secret_inside_a_field_name_costs_no_event() -> None:
    """A short registered secret that is part of a schema field name (``buildi`` in ``buildid``)
    is scrubbed from values, but the field names stay: the event is sent, not dropped."""
    r = convert.Redactor(secret_values=["buildi"])
    body = _emit(r, _entity_events(r, "x buildi y"))
    assert b'"buildid":1' in body and b"x <secret> y" in body


_json_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(data=st.data(), secret_list=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=4,
                                                     max_size=12), max_size=3))
def test_may_change_never_misses_what_scrubbing_would_change(data: st.DataObject, secret_list: list[str]) -> None:
    """``_emit`` sends an event's first encoding unscrubbed when ``Redactor.may_change`` says
    no: that must only ever happen when scrubbing would have changed nothing, for any secrets
    (quotes, backslashes, control characters, non-ASCII) and any strings, keys included."""
    r = convert.Redactor(secret_values=secret_list)
    cores = [s.strip() for s in secret_list if len(s.strip()) >= 4]
    # Strings that hold a secret (or a URL with credentials) often, as well as arbitrary ones.
    text = st.one_of(
        _json_text,
        st.builds(lambda a, s, b: a + s + b, _json_text, st.sampled_from(cores or ["none"]), _json_text),
        st.builds(lambda a, b: f"{a}https://u:p@{b}", _json_text, _json_text),
    )
    value = data.draw(st.recursive(
        st.one_of(text, st.integers(-5, 5), st.none(), st.booleans()),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
        max_leaves=12,
    ))
    if not r.may_change(dumps(value)):
        assert r.scrub_all(value) == value
