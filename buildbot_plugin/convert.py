"""Pure conversion of Buildbot message-queue payloads into firehose event data.

Nothing here does I/O or keeps state between calls: :mod:`buildbot_plugin.tracker` holds the
caches and decides *when* to emit; these functions decide *what* an event says.  That split keeps
the field mapping easy to test without a master.

Buildbot payloads are awkward in a few ways that every function here absorbs:

* times are ``datetime`` under the simple mq, ints under wamp, and sometimes already epoch ints;
* properties are ``(value, source)`` tuples (lists under wamp);
* some payloads are dataclasses (``buildrequests/*/cancel`` carries a ``BuildRequestModel``).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from firehose.event import RESULT_NAMES, dumps
from firehose.schema import FIELD_NAMES

#: Property names (and keys inside property values, at any depth) matching any of these
#: case-insensitive regular expressions, searched anywhere in the name, have their value replaced
#: by :data:`REDACTED`.  Each is searched in the name as written and with camelCase split by
#: ``_`` (``dbPass`` is also tried as ``db_Pass``), so the two short, ambiguous words are matched
#: only as word parts: ``pass`` (``DB_PASS``, ``dbPass``, not ``passed`` or ``compass``) and
#: ``auth`` (``auth``, ``oauth``, ``authorization``, not ``author``).  ``key`` covers ``api_key``,
#: ``apiKey``, ``private_key``, ``ssh_key``; false positives such as ``monkey`` are the price of
#: never missing a key.
DEFAULT_DENY_PATTERNS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "passcode",
    "(?<![a-z])pass(?![a-z])",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "(?<![a-z])creds?(?![a-z])",
    "auth(?!or(?!i[sz]))",
    "cookie",
    "session",
)

#: What a redacted value is replaced with (also the whole userinfo of a URL).
REDACTED = "<redacted>"
#: What a known secret value is replaced with.
SECRET = "<secret>"
_MARKERS = (SECRET, REDACTED)

#: Nested property values deeper than this are sent as :data:`REDACTED`: bounds the walk, and
#: keeps the event within the server's nesting limit (32 levels, the value itself sits at up
#: to 5 inside a ``master.started`` snapshot), so a deep value cannot get its event dropped.
MAX_DEPTH = 16

#: The userinfo of a URL (``scheme://user:pass@``): everything from ``://`` to the last ``@``
#: before the authority ends, so a password containing a raw ``@`` goes too.
_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

#: A header line of a stdio log that starts the worker's environment dump.
_ENV_START = " environment:"
#: Environment dump lines: two spaces then ``NAME=``.
_ENV_LINE = re.compile(r"^  [^\s=]+=")
#: The header lines buildbot-worker writes right after the environment dump.
_ENV_END = re.compile(r"^ (?:using PTY: |writing \d+ bytes to stdin$)")


def get(payload: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dict payload or a dataclass/model payload alike."""
    if type(payload) is dict:  # nearly always; isinstance of an ABC costs more than the get
        return payload.get(name, default)
    if isinstance(payload, Mapping):
        return payload.get(name, default)
    return getattr(payload, name, default)


def epoch(value: Any) -> float | int | None:
    """Turn a Buildbot time (``datetime``, epoch number or ``None``) into epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        ts = value.timestamp()
        return int(ts) if ts == int(ts) else ts
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    return None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def plain(value: Any) -> Any:
    """Make a value JSON-safe: datetimes to epoch, tuples to lists, dataclasses to dicts.

    Buildbot's own ``toJson`` silently maps unknown types to ``None``; this keeps them as
    strings instead, so nothing vanishes without a trace.  An integer outside 64 bits (a
    property may hold one) becomes a string too: JSON encoders and the server refuse it, and
    the whole event would be lost with it.
    """
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime):
        return epoch(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def result_fields(code: Any) -> dict[str, Any]:
    """``results`` (Buildbot's int code) and ``result`` (its name) for an entity.

    An unfinished entity (``None``, or ``-1`` for a build request) has both ``None``.
    """
    if isinstance(code, bool) or not isinstance(code, int) or code < 0:
        return {"results": None, "result": None}
    return {"results": code, "result": RESULT_NAMES.get(code, str(code))}


def duration(started: Any, complete: Any) -> float | int | None:
    """Seconds between two Buildbot times, or ``None`` while unfinished."""
    s, c = epoch(started), epoch(complete)
    if s is None or c is None:
        return None
    return c - s


class Redactor:
    """Decides which property values and which substrings must never leave the master.

    Three rules, applied to everything an event carries (:meth:`scrub_all` runs on every event's
    data before it is encoded):

    * a property whose *name* is deny-listed, or a key inside a property value (dicts and lists
      are walked to :data:`MAX_DEPTH`), has its value sent as :data:`REDACTED`;
    * every known secret value, anywhere inside any string, becomes :data:`SECRET`;
    * the userinfo of every URL in any string (``https://user:pass@host``) becomes
      :data:`REDACTED`: tokens travel as user names as often as passwords.

    :param deny_patterns: case-insensitive regular expressions searched in names (see
        :data:`DEFAULT_DENY_PATTERNS`).
    :param secret_values: known secret values.
    """

    def __init__(
        self,
        deny_patterns: Sequence[str] = DEFAULT_DENY_PATTERNS,
        secret_values: Iterable[str] = (),
    ) -> None:
        self.deny_patterns = tuple(deny_patterns)
        self._deny = (
            re.compile("|".join(f"(?:{p})" for p in self.deny_patterns), re.IGNORECASE)
            if self.deny_patterns
            else None
        )
        self._denied: dict[str, bool] = {}
        self._secrets: set[str] = set()
        self._secret_re: re.Pattern[str] | None = None
        #: The secrets as they appear inside an encoded JSON string; ``None`` while there are
        #: none or when one cannot be encoded (then :meth:`may_change` always says yes).
        self._encoded_re: re.Pattern[bytes] | None = None
        self._split_re: re.Pattern[str] | None = None
        self.context_lines = 0
        self.add_secrets(secret_values)

    @property
    def has_secrets(self) -> bool:
        """Whether any secret value is known (secret scrubbing is skipped entirely otherwise)."""
        return self._secret_re is not None

    def add_secrets(self, values: Iterable[str]) -> bool:
        """Learn secret values to scrub; returns whether anything new was learnt.

        Surrounding whitespace is dropped (a secret read from a file often ends with a newline
        that the log does not show; the core is what must not leak).  Values shorter than 4
        characters are ignored: scrubbing them would mangle ordinary text and they are not worth
        protecting this way.
        """
        cores = {v.strip() for v in values if isinstance(v, str)}
        new = {v for v in cores if len(v) >= 4} - self._secrets
        if not new:
            return False
        self._secrets |= new
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._secret_re = re.compile("|".join(re.escape(s) for s in ordered))
        try:
            # JSON escapes a string character by character, so a string holds a secret exactly
            # when its encoding holds the secret's encoding (quotes stripped).
            self._encoded_re = re.compile(b"|".join(re.escape(dumps(s)[1:-1]) for s in ordered))
        except (TypeError, ValueError):  # a lone surrogate: no shortcut
            self._encoded_re = None
        # Log lines: Buildbot stores a line longer than 4096 characters as several lines, turns
        # '\r' into a line break, and a secret may itself hold newlines (a key), so in joined log
        # text a secret may have a line break between any two of its characters.
        logged = sorted({s.replace("\r\n", "\n").replace("\r", "\n") for s in self._secrets}, key=len, reverse=True)
        self._split_re = re.compile("|".join("\n?".join(re.escape(c) for c in s) for s in logged))
        self.context_lines = min(256, max(s.count("\n") + len(s) // 4000 + 2 for s in logged))
        return True

    def denied(self, name: str) -> bool:
        """Whether a property (or a key inside a property value) of this name is redacted.

        Answers are remembered (a master's property names are few and every build event
        carries them all); the memory is bounded.
        """
        known = self._denied.get(name)
        if known is not None:
            return known
        answer = self._deny is not None and bool(self._deny.search(name) or self._deny.search(_CAMEL.sub("_", name)))
        if len(self._denied) >= 10000:
            self._denied.clear()
        self._denied[name] = answer
        return answer

    def may_change(self, encoded: bytes) -> bool:
        """Whether :meth:`scrub_all` could change a value whose JSON encoding is ``encoded``.

        ``False`` only when no string in it holds a known secret and none holds both ``://``
        and ``@`` (a URL's userinfo): then scrubbing is the identity and the encoding can be
        sent as it is.  A yes may be wrong (a secret's digits inside a number, ``@`` and
        ``://`` in two different strings); a no never is.
        """
        if b"@" in encoded and b"://" in encoded:
            return True
        if self._secret_re is None:
            return False
        return self._encoded_re is None or self._encoded_re.search(encoded) is not None

    def scrub(self, text: str) -> str:
        """Replace every known secret value and every URL's userinfo inside ``text``."""
        if not text:
            return text
        if self._secret_re is not None:
            text = self._secret_re.sub(SECRET, text)
        return _scrub_userinfo(text)

    def scrub_lines(self, lines: Sequence[str], before: Sequence[str] = ()) -> list[str]:
        """Scrub consecutive log lines as one text, so a secret split over lines goes too.

        :param before: the raw lines just before ``lines`` (already sent): context only, so the
            end of a secret that started there is found; they are not returned.
        :returns: one scrubbed line per line of ``lines``; a secret spanning lines is replaced by
            :data:`SECRET` on the line where it starts, and its other pieces vanish.
        """
        if self._split_re is not None:
            joined = self._split_re.sub(lambda m: SECRET + "\n" * m.group().count("\n"), "\n".join([*before, *lines]))
            lines = joined.split("\n")[len(before):]
        return [_scrub_userinfo(line) for line in lines]

    def scrub_all(self, value: Any) -> Any:
        """Scrub secret values and URL userinfo from every string (keys too) of a JSON-like value.

        The schema's own field names are left alone: they are a public vocabulary, and a short
        secret that happens to be part of ``buildid`` must not cost the event its required keys.
        """
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k if k in FIELD_NAMES else self.scrub(k): self.scrub_all(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_all(v) for v in value]
        return value

    def properties(self, props: Mapping[str, Any] | None) -> dict[str, Any]:
        """``{name: value}`` from Buildbot properties, denied names redacted at any depth.

        Accepts both ``{name: (value, source)}`` (Buildbot's form) and ``{name: value}``.
        """
        out: dict[str, Any] = {}
        for name, raw in (props or {}).items():
            out[name] = REDACTED if self.denied(name) else self._nested(plain(prop_value(raw)), 1)
        return out

    def _nested(self, value: Any, depth: int) -> Any:
        """Redact the values of denied keys inside a plain value; too deep is redacted whole."""
        if not isinstance(value, dict | list):
            return value
        if depth > MAX_DEPTH:
            return REDACTED
        if isinstance(value, list):
            return [self._nested(v, depth + 1) for v in value]
        return {k: REDACTED if self.denied(k) else self._nested(v, depth + 1) for k, v in value.items()}


def _scrub_userinfo(text: str) -> str:
    """``scheme://user:pass@host`` -> ``scheme://<redacted>@host`` anywhere in ``text``."""
    if "://" not in text or "@" not in text:
        return text
    return _USERINFO.sub(REDACTED + "@", text)


def _truncate(line: str, limit: int) -> str:
    """Cut ``line`` to ``limit`` characters (plus an ellipsis), never through a marker.

    Runs after scrubbing, so the kept part can hold only markers, never a secret's beginning;
    a marker the cut would split is dropped whole rather than left as a ``<sec`` stub.
    """
    if len(line) <= limit:
        return line
    cut = limit
    for marker in _MARKERS:
        start = line.find(marker, max(0, cut - len(marker) + 1))
        if start != -1 and start < cut:
            cut = start
    return line[:cut] + "…"


def prop_value(raw: Any) -> Any:
    """The value of a Buildbot property entry, which is ``(value, source)`` or a bare value."""
    if isinstance(raw, tuple | list) and len(raw) == 2 and isinstance(raw[1], str):
        return raw[0]
    return raw


def sourcestamp(ss: Any) -> dict[str, Any]:
    """The filterable identity of a source stamp."""
    out: dict[str, Any] = {}
    for field in ("repository", "branch", "revision", "project", "codebase"):
        v = get(ss, field)
        out[field] = v if isinstance(v, str) else None
    ssid = get(ss, "ssid")
    if isinstance(ssid, int):
        out["ssid"] = ssid
    return out


def sourcestamps(stamps: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Convert a list of source stamps (``[]`` for ``None``)."""
    return [sourcestamp(ss) for ss in stamps or ()]


def top_source(stamps: Sequence[Mapping[str, Any]], properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The top-level ``branch``/``revision``/``project``/``repository`` subscribers filter on.

    Taken from the first source stamp (the build's main codebase); build properties win where
    set, because a source step may record the actual ``got_revision`` and a scheduler may set
    ``branch``.  Empty strings become ``None``: "no branch" is not the branch "".
    """
    props = properties or {}
    first = stamps[0] if stamps else {}
    out: dict[str, Any] = {}
    for field in ("branch", "project", "repository", "revision"):
        v = props.get(field)
        if not isinstance(v, str) or not v or v == REDACTED:
            v = first.get(field)
        out[field] = v if isinstance(v, str) and v else None
    got = props.get("got_revision")
    if isinstance(got, str) and got and got != REDACTED:
        out["revision"] = got
    return out


def build_url(base: str | None, builderid: Any, number: Any) -> str | None:
    """The build's page in the master's web UI, or ``None`` without a ``buildbotURL``."""
    if not base or not isinstance(builderid, int) or not isinstance(number, int):
        return None
    if not base.endswith("/"):
        base += "/"
    return f"{base}#/builders/{builderid}/builds/{number}"


def build_data(
    build: Any,
    *,
    builder: str,
    tags: Sequence[str] = (),
    worker: str | None = None,
    properties: Mapping[str, Any] | None = None,
    stamps: Sequence[Mapping[str, Any]] = (),
    buildsetid: int | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Data of a ``build.*`` event.

    :param build: the Buildbot build payload (``builds/<id>/*``).
    :param builder: the builder's name (the payload only has its id).
    :param properties: the build's properties, already redacted (``{name: value}``).
    :param stamps: converted source stamps of the build's buildset.
    """
    props = dict(properties or {})
    started, complete = get(build, "started_at"), get(build, "complete_at")
    data: dict[str, Any] = {
        "buildid": get(build, "buildid"),
        "number": get(build, "number"),
        "builder": builder,
        "builderid": get(build, "builderid"),
        "tags": list(tags),
        "buildrequestid": get(build, "buildrequestid"),
        "buildsetid": buildsetid,
        "workerid": get(build, "workerid"),
        "worker": worker,
        "masterid": get(build, "masterid"),
        "state": get(build, "state_string"),
        "complete": bool(get(build, "complete")),
        "started_at": epoch(started),
        "complete_at": epoch(complete),
        "duration": duration(started, complete),
        **result_fields(get(build, "results")),
        "properties": props,
        "sourcestamps": list(stamps),
        **top_source(stamps, props),
        "url": url,
    }
    return data


def step_data(step: Any, *, build: Mapping[str, Any]) -> dict[str, Any]:
    """Data of a ``step.*`` event.

    :param step: the Buildbot step payload.
    :param build: the converted data of the step's build (identity and filter fields are
        copied, so ``builder=X`` or ``branch=Y`` filters see the build's steps too).
    """
    started, complete = get(step, "started_at"), get(step, "complete_at")
    urls = [
        {"name": str(get(u, "name") or get(u, "url")), "url": str(get(u, "url"))}
        for u in get(step, "urls") or ()
        if get(u, "url")
    ]
    return {
        "stepid": get(step, "stepid"),
        "buildid": get(step, "buildid"),
        "build_number": build.get("number"),
        "builder": build["builder"],
        "builderid": build.get("builderid"),
        "worker": build.get("worker"),
        "branch": build.get("branch"),
        "revision": build.get("revision"),
        "project": build.get("project"),
        "repository": build.get("repository"),
        "name": get(step, "name"),
        "number": get(step, "number"),
        "state": get(step, "state_string"),
        "hidden": bool(get(step, "hidden")),
        "started_at": epoch(started),
        "complete_at": epoch(complete),
        "duration": duration(started, complete),
        **result_fields(get(step, "results")),
        "urls": urls,
        "build_url": build.get("url"),
    }


def request_data(
    request: Any,
    *,
    builder: str,
    buildset: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Data of a ``request.*`` event.

    :param buildset: converted data of the request's buildset (reason, source stamps), when known.
    """
    bs = buildset or {}
    stamps = list(bs.get("sourcestamps") or ())
    return {
        "buildrequestid": get(request, "buildrequestid"),
        "buildsetid": get(request, "buildsetid"),
        "builder": builder,
        "builderid": get(request, "builderid"),
        "priority": get(request, "priority"),
        "reason": bs.get("reason"),
        "scheduler": bs.get("scheduler"),
        "claimed": bool(get(request, "claimed")),
        "claimed_by_masterid": get(request, "claimed_by_masterid"),
        "complete": bool(get(request, "complete")),
        "submitted_at": epoch(get(request, "submitted_at")),
        "claimed_at": epoch(get(request, "claimed_at")),
        "complete_at": epoch(get(request, "complete_at")),
        **result_fields(get(request, "results")),
        "sourcestamps": stamps,
        **top_source(stamps),
    }


def buildset_data(buildset: Any, *, builders: Sequence[str] = ()) -> dict[str, Any]:
    """Data of a ``buildset.*`` event (``buildsets/<id>/new`` carries its source stamps)."""
    stamps = sourcestamps(get(buildset, "sourcestamps"))
    return {
        "buildsetid": get(buildset, "bsid"),
        "reason": get(buildset, "reason"),
        "scheduler": get(buildset, "scheduler"),
        "external_idstring": get(buildset, "external_idstring"),
        "parent_buildid": get(buildset, "parent_buildid"),
        "builders": list(builders),
        "submitted_at": epoch(get(buildset, "submitted_at")),
        "complete": bool(get(buildset, "complete")),
        "complete_at": epoch(get(buildset, "complete_at")),
        **result_fields(get(buildset, "results")),
        "sourcestamps": stamps,
        **top_source(stamps),
    }


def change_data(change: Any, redactor: Redactor) -> dict[str, Any]:
    """Data of a ``change.new`` event."""
    files = [str(f) for f in get(change, "files") or ()]
    return {
        "changeid": get(change, "changeid"),
        "author": get(change, "author"),
        "committer": get(change, "committer"),
        "branch": get(change, "branch") or None,
        "revision": get(change, "revision") or None,
        "repository": get(change, "repository") or None,
        "project": get(change, "project") or None,
        "codebase": get(change, "codebase"),
        "category": get(change, "category"),
        "files": files,
        "comments": get(change, "comments"),
        "revlink": get(change, "revlink") or None,
        "when": epoch(get(change, "when_timestamp")),
        "parent_changeids": plain(get(change, "parent_changeids") or []),
        "properties": redactor.properties(get(change, "properties")),
    }


def worker_data(worker: Any, *, connected: bool) -> dict[str, Any]:
    """Data of a ``worker.connected``/``worker.disconnected`` event."""
    info = get(worker, "workerinfo") or {}
    return {
        "worker": get(worker, "name"),
        "workerid": get(worker, "workerid"),
        "connected": connected,
        "connected_to": [get(m, "masterid") for m in get(worker, "connected_to") or ()],
        "paused": bool(get(worker, "paused")),
        "graceful": bool(get(worker, "graceful")),
        "info": {k: plain(v) for k, v in info.items() if k in ("host", "version", "admin", "access_uri")},
    }


def log_data(log: Any, *, step: Mapping[str, Any]) -> dict[str, Any]:
    """Identity part of a ``log.*`` event.

    :param step: converted data of the log's step.
    """
    return {
        "logid": get(log, "logid"),
        "stepid": step["stepid"],
        "step": step.get("name"),
        "buildid": step["buildid"],
        "build_number": step.get("build_number"),
        "builder": step["builder"],
        "builderid": step.get("builderid"),
        "branch": step.get("branch"),
        "worker": step.get("worker"),
        "name": get(log, "name"),
        "slug": get(log, "slug"),
        "log_type": get(log, "type"),
    }


class StdioFilter:
    """Removes the worker's environment dump from the header lines of a stdio log.

    buildbot-worker sends the dump as one header message, ``environment:`` then ``  NAME=value``
    per variable; a value may hold newlines (an SSH key in a variable), and its later lines can
    look like anything, so no line's shape tells where a value ends.  What does is the worker's
    next header, always ``using PTY: ...`` (or ``writing N bytes to stdin`` before it): the
    filter drops every header line from the dump's start to that marker, whatever comes between.
    A stdout or stderr line also ends the dump (the command is running).  The filter is stateful
    across the chunks of one log, and after lines were skipped unseen it fails closed: see
    :meth:`lost_lines`.
    """

    def __init__(self) -> None:
        self.in_env = False

    def keep(self, line: str) -> bool:
        """Whether a raw stdio line (stream character first) may be sent."""
        if not line.startswith("h"):
            self.in_env = False
            return True
        text = line[1:]
        if self.in_env:
            if not _ENV_END.match(text):
                return False
            self.in_env = False
            return True
        if text.startswith(_ENV_START):
            self.in_env = True
            return True  # the marker itself carries nothing secret
        return not _ENV_LINE.match(text)

    def lost_lines(self) -> None:
        """Lines were skipped unseen: they may have started a dump, so drop headers until its end."""
        self.in_env = True


def split_log_lines(
    content: str,
    *,
    log_type: str,
    stdio: StdioFilter | None,
    redactor: Redactor,
    max_line: int = 2000,
    emit: int | None = None,
    tail: list[str] | None = None,
) -> tuple[list[str], str | None, int]:
    """Split a chunk of log content into lines to send: filter, scrub, then truncate.

    Scrubbing runs on whole lines joined together (a secret may span lines) and before the cut
    at ``max_line``, so no secret's beginning survives a cut.

    :param emit: how many of the content's lines to send; lines after them are read only as
        context, so a secret that starts in the last sent line and ends in the next is found.
    :param tail: the raw lines that preceded ``content`` (context for a secret that started
        there); updated in place to the last :attr:`Redactor.context_lines` raw lines sent.
    :returns: ``(lines, streams, removed)``: for stdio logs the stream character is stripped from
        each line and returned in ``streams`` (one char per line: ``o`` stdout, ``e`` stderr,
        ``h`` header); ``removed`` counts lines dropped by the environment filter.
    """
    raw = content.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    count = len(raw) if emit is None else min(emit, len(raw))
    texts: list[str] = []
    streams: list[str] = []
    keep: list[bool] = []
    for i, line in enumerate(raw):
        text = line[1:] if log_type == "s" else line
        texts.append(text)
        if i >= count:
            continue
        if log_type == "s":
            # Decide on the raw line: a scrubbed one could hide the dump's start marker.
            keep.append(stdio is None or stdio.keep(line))
            streams.append(line[:1] or "o")
        else:
            keep.append(True)
    before = list(tail or ())
    scrubbed = redactor.scrub_lines(texts, before=before)[:count]
    if tail is not None:
        tail[:] = [*before, *texts[:count]][-redactor.context_lines :] if redactor.context_lines else []
    lines = [_truncate(text, max_line) for text, k in zip(scrubbed, keep, strict=True) if k]
    if log_type != "s":
        return lines, None, 0
    return lines, "".join(st for st, k in zip(streams, keep, strict=True) if k), keep.count(False)


def sanitize_master_name(name: str) -> str:
    """Turn Buildbot's master name (``host:/path/to/basedir``) into a valid firehose name."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
    return (out or "master")[:128]
