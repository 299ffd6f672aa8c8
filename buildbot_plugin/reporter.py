"""``FirehoseReporter``: the Buildbot service that publishes a master's events to a firehose.

Add it to ``master.cfg``::

    from buildbot.plugins import reporters, util
    c['services'].append(reporters.FirehoseReporter(
        url='http://firehose.example:8080', token=util.Secret('firehose_token')))

Several nodes of one firehose (sharing a Redis journal) are given as a list, or one string
separated by commas or spaces: ``url=['http://fh1:8080', 'http://fh2:8080']``.  The outbox
then fails over between them (see :mod:`buildbot_plugin.outbox`).

How it stays off the master's critical path: it wraps ``master.mq.produce`` with a function
that checks the routing key's shape and appends ``(key, payload, time)`` to a deque.  Everything
else (conversion, the occasional data-API lookup, JSON encoding, validation, HTTP, disk) runs
later in the reactor or in a thread.  Wrapping ``produce`` rather than consuming the mq also
means that in a multi-master cluster each master forwards exactly the events it produced.
"""

from __future__ import annotations

import collections
import os
import re
import secrets as _secrets
import socket
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.util import service
from twisted.internet import defer, task, threads
from twisted.python import log
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from buildbot_plugin import convert
from buildbot_plugin.outbox import MIB, Item, Outbox
from buildbot_plugin.sender import HttpSender
from buildbot_plugin.tracker import Tracker
from firehose.event import dumps
from firehose.schema import MASTER_NAME_PATTERN, SchemaError, validate_event

__all__ = ["FirehoseReporter", "HttpSender"]

_TICK = ("_tick",)
_HEARTBEAT = ("_heartbeat",)


def split_urls(url: Any) -> list[str]:
    """The URLs in ``url``: a string (one URL, or several separated by commas or whitespace)
    or a list/tuple of such strings; anything else gives ``[]`` for ``checkConfig`` to report."""
    if isinstance(url, str):
        items: list[Any] = [url]
    elif isinstance(url, list | tuple):
        items = list(url)
    else:
        return []
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            return []
        out.extend(u for u in re.split(r"[\s,]+", item) if u)
    return out


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        config.error(f"FirehoseReporter: url must be an http:// or https:// URL with a host, got {url!r}")
    elif parts.query or parts.fragment:
        config.error(f"FirehoseReporter: url must not have a query or fragment, got {url!r}")
    else:
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            config.error(f"FirehoseReporter: url has an invalid port: {url!r}")


def _check_number(name: str, value: Any, minimum: float = 0, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= minimum:
        config.error(f"FirehoseReporter: {name} must be a {'whole ' if integer else ''}number > {minimum}, got {value!r}")


class FirehoseReporter(service.BuildbotService):
    """Publishes this master's builds, steps, requests, buildsets, changes, workers and
    (optionally) logs to a firehose server.  See ``docs/plugin.md`` for every option.

    :param url: base URL of the firehose server (``http://host:port``), or of each node of one
        firehose: a list, or a string separated by commas or spaces (failover, in that order).
    :param token: bearer token for ``/ingest`` (a string or a secret such as
        ``util.Secret('firehose_token')``).
    :param master_name: the name events carry; defaults to this master's name made safe.
    """

    name = "FirehoseReporter"

    #: Option defaults (every keyword is documented in docs/plugin.md).
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "deny_patterns": convert.DEFAULT_DENY_PATTERNS,
        "extra_deny_patterns": (),
        "secret_names": (),
        "logs": False,
        "log_lines_per_second": 500.0,
        "log_burst": 5000,
        "spool_dir": None,
        "spool_max_bytes": 256 * MIB,
        "memory_max_bytes": 16 * MIB,
        "batch_max_bytes": 256 * 1024,
        "batch_max_events": 1000,
        "flush_interval": 0.01,
        "spool_after": 5.0,
        "backoff_max": 30.0,
        "heartbeat_interval": 30.0,
        "request_timeout": 30.0,
        "stop_timeout": 5.0,
        "queue_max_events": 100000,
        "buildbot_url": None,
    }

    # Made by startService; reconfigService may run before (checks with getattr).
    tracker: Tracker
    _botmaster: Any = None
    senders: list[HttpSender]
    outbox: Outbox
    #: The wrapper installed on ``master.mq.produce`` (it carries the original).
    _hook: Any = None

    def __init__(self, url: str | list[str], token: Any, master_name: str | None = None, **kwargs: Any) -> None:
        self.reactor: Any = kwargs.pop("reactor", None)
        super().__init__(url, token, master_name, **kwargs)

    # -- configuration ---------------------------------------------------------------------------

    def checkConfig(self, url: Any = None, token: Any = None, master_name: Any = None, **kwargs: Any) -> None:
        """Report every bad argument with a message naming the option (at ``checkconfig``)."""
        unknown = set(kwargs) - set(self.DEFAULTS) - {"name"}
        if unknown:
            config.error(f"FirehoseReporter: unknown option(s) {', '.join(sorted(unknown))}")
        urls = split_urls(url)
        if not urls:
            config.error(
                "FirehoseReporter: url is required, e.g. url='http://firehose.example:8080' "
                "(or a list of the URLs of one firehose's nodes)"
            )
        for u in urls:
            _check_url(u)
        normalized = [u.rstrip("/") for u in urls]
        if len(set(normalized)) != len(normalized):
            config.error(f"FirehoseReporter: url lists the same server twice: {url!r}")
        if token is None or (isinstance(token, str) and not token.strip()):
            config.error(
                "FirehoseReporter: token is required (the bearer token the firehose server gave this "
                "master), e.g. token=util.Secret('firehose_token')"
            )
        elif not isinstance(token, str) and not IRenderable.providedBy(token):
            config.error(f"FirehoseReporter: token must be a string or a secret, got {type(token).__name__}")
        if master_name is not None and (
            not isinstance(master_name, str) or not re.match(MASTER_NAME_PATTERN, master_name)
        ):
            config.error(
                f"FirehoseReporter: master_name must match {MASTER_NAME_PATTERN} (letters, digits, '.', '_', '-'), "
                f"got {master_name!r}"
            )
        opts = {**self.DEFAULTS, **kwargs}
        for key in ("deny_patterns", "extra_deny_patterns", "secret_names"):
            value = opts[key]
            if isinstance(value, str) or not isinstance(value, list | tuple):
                config.error(f"FirehoseReporter: {key} must be a list of strings, got {value!r}")
                continue
            for p in value:
                if not isinstance(p, str) or not p:
                    config.error(f"FirehoseReporter: {key} entries must be non-empty strings, got {p!r}")
                elif key != "secret_names":
                    try:
                        re.compile(p)
                    except re.error as exc:
                        config.error(f"FirehoseReporter: {key}: bad regular expression {p!r}: {exc}")
        if not isinstance(opts["logs"], bool):
            config.error(f"FirehoseReporter: logs must be True or False, got {opts['logs']!r}")
        for key in ("log_lines_per_second", "backoff_max", "heartbeat_interval", "request_timeout", "stop_timeout"):
            _check_number(key, opts[key])
        flush = opts["flush_interval"]
        if isinstance(flush, bool) or not isinstance(flush, int | float) or not 0 <= flush <= 60:
            config.error(f"FirehoseReporter: flush_interval must be a number of seconds from 0 to 60, got {flush!r}")
        _check_number("spool_after", opts["spool_after"], minimum=-1)
        for key in ("log_burst", "spool_max_bytes", "memory_max_bytes", "batch_max_bytes", "batch_max_events",
                    "queue_max_events"):
            _check_number(key, opts[key], integer=True)
        if isinstance(opts["batch_max_bytes"], int) and opts["batch_max_bytes"] > 900 * 1024:
            config.error("FirehoseReporter: batch_max_bytes must stay under the server's 1 MiB body limit (<= 900 KiB)")
        for key in ("spool_dir", "buildbot_url"):
            if opts[key] is not None and (not isinstance(opts[key], str) or not opts[key]):
                config.error(f"FirehoseReporter: {key} must be a non-empty string or None, got {opts[key]!r}")

    @defer.inlineCallbacks
    def reconfigService(self, url: str | list[str], token: Any, master_name: str | None = None, **kwargs: Any) -> Any:
        """Apply (new) settings; a running reporter keeps its incarnation, sequence and queue."""
        #: Base URLs of the nodes, in failover order; ``url`` names them all (logs).
        self.urls = [u.rstrip("/") for u in split_urls(url)]
        self.url = ", ".join(self.urls)
        self.token = yield self.renderSecrets(token)
        self.opts = {**self.DEFAULTS, **kwargs}
        self.master_name = master_name or convert.sanitize_master_name(self.master.name)
        self.redactor = convert.Redactor(
            tuple(self.opts["deny_patterns"]) + tuple(self.opts["extra_deny_patterns"]),
            secret_values=[self.token],
        )
        for name in self.opts["secret_names"]:
            value = yield self._secret_value(name)
            if value:
                self.redactor.add_secrets([value])
        if getattr(self, "tracker", None) is not None:
            self.tracker.redactor = self.redactor
            self.tracker.logs = self.opts["logs"]
            self.tracker.buildbot_url = self._buildbot_url()
        if getattr(self, "senders", None) is not None:
            old = self.senders
            if [s.url for s in old] != [u + "/ingest" for u in self.urls] or old[0].token != self.token:
                self.senders = self._make_senders()
                self.outbox.set_senders(self.senders)
                for sender in old:
                    yield sender.close()

    def _make_senders(self) -> list[HttpSender]:
        """One sender (its own persistent connection) per node."""
        return [HttpSender(u, self.token, self.reactor, self.opts["request_timeout"]) for u in self.urls]

    @defer.inlineCallbacks
    def _secret_value(self, name: str) -> Any:
        try:
            details = yield self.master.secrets_manager.get(name)
        except Exception as exc:  # noqa: BLE001 - a missing secret must not stop the master
            log.msg(f"firehose: cannot read secret {name!r} to scrub it: {exc}")
            return None
        return getattr(details, "value", None)

    def _buildbot_url(self) -> str | None:
        return self.opts["buildbot_url"] or getattr(self.master.config, "buildbotURL", None) or None

    # -- lifecycle -------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def startService(self) -> Any:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        yield super().startService()  # runs reconfigService the first time
        self.incarnation = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{_secrets.token_hex(6)}"
        self.seq = 0
        self._raw: collections.deque[tuple[tuple[str, ...], Any, float]] = collections.deque()
        self._overflow = 0
        self._draining: defer.Deferred[Any] | None = None
        self._accepting = True
        self._threadpool = ThreadPool(minthreads=0, maxthreads=1, name="firehose-spool")
        self._threadpool.start()
        spool = self.opts["spool_dir"] or os.path.join(self.master.basedir or ".", "firehose-spool")
        self.senders = self._make_senders()
        self.outbox = Outbox(
            sender=self.senders,
            spool_dir=spool,
            reactor=self.reactor,
            run_in_thread=lambda f, *a: threads.deferToThreadPool(self.reactor, self._threadpool, f, *a),
            batch_max_bytes=self.opts["batch_max_bytes"],
            batch_max_events=self.opts["batch_max_events"],
            flush_interval=self.opts["flush_interval"],
            memory_max_bytes=self.opts["memory_max_bytes"],
            spool_max_bytes=self.opts["spool_max_bytes"],
            spool_after=self.opts["spool_after"],
            backoff_max=self.opts["backoff_max"],
        )
        self.tracker = Tracker(
            fetch=self.master.data.get,
            redactor=self.redactor,
            seconds=self.reactor.seconds,
            buildbot_url=self._buildbot_url(),
            logs=self.opts["logs"],
            log_lines_per_second=self.opts["log_lines_per_second"],
            log_burst=self.opts["log_burst"],
            secrets_for_build=self._secrets_for_build,
        )
        # Capture from now on, so nothing falls between the snapshot and the live stream.
        self._install_hook()
        yield self.outbox.start()
        try:
            yield self.tracker.preload()
            snap = yield self.tracker.snapshot(getattr(self.master, "masterid", None))
        except Exception as exc:  # noqa: BLE001 - the stream matters more than the snapshot
            log.msg(f"firehose: snapshot failed ({exc}); publishing master.started without it")
            snap = {"running": [], "queued": []}
        self._emit("master.started", self._master_data(snap), self.reactor.seconds())
        self._kick()
        self._tick_loop = task.LoopingCall(self._enqueue, _TICK, None)
        self._tick_loop.clock = self.reactor
        self._tick_loop.start(1.0, now=False)
        self._heartbeat_loop = task.LoopingCall(self._enqueue, _HEARTBEAT, None)
        self._heartbeat_loop.clock = self.reactor
        self._heartbeat_loop.start(self.opts["heartbeat_interval"], now=False)
        log.msg(
            f"firehose: publishing as {self.master_name!r} (incarnation {self.incarnation}) to {self.url}; "
            f"spool {spool}"
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if getattr(self, "outbox", None) is None:
            yield super().stopService()
            return
        for loop in (self._tick_loop, self._heartbeat_loop):
            if loop.running:
                loop.stop()
        self._remove_hook()
        yield self._wait_drained()
        self._emit("master.stopped", self._master_data(None), self.reactor.seconds())
        try:
            yield self.outbox.stop(self.opts["stop_timeout"])
        finally:
            for sender in self.senders:
                yield sender.close()
            self._threadpool.stop()
            self.outbox = None  # type: ignore[assignment]
        yield super().stopService()

    def _master_data(self, snapshot: dict[str, Any] | None) -> dict[str, Any]:
        import buildbot

        data: dict[str, Any] = {
            "last_seq": self.seq + 1,
            "masterid": getattr(self.master, "masterid", None),
            "buildbot_master": self.master.name,
            "hostname": socket.gethostname(),
            "buildbot_version": getattr(buildbot, "version", None),
            "url": self._buildbot_url(),
            "pending": self.outbox.pending,
            "spooled": self.outbox.spooled,
            "dropped": self.outbox.stats["dropped"] + self.outbox.stats["dropped_unsequenced"] + self._overflow,
        }
        if snapshot is not None:
            data.update(snapshot)
        return data

    # -- capture (on the master's path: keep it trivial) ---------------------------------------

    def _install_hook(self) -> None:
        mq = self.master.mq
        original = mq.produce
        enqueue = self._enqueue
        wants = Tracker.wants

        def produce(routingKey: tuple[str, ...], data: Any) -> Any:
            try:
                if wants(routingKey):
                    enqueue(routingKey, data)
            except Exception:  # noqa: BLE001 - never break the master
                log.err(None, "firehose: capture failed")
            return original(routingKey, data)

        produce.firehose_original = original  # type: ignore[attr-defined]
        self._hook = produce
        mq.produce = produce

    def _remove_hook(self) -> None:
        mq = self.master.mq
        if getattr(self, "_hook", None) is None:
            return
        if mq.produce is self._hook:
            mq.produce = self._hook.firehose_original
        else:  # someone wrapped us; leave their wrapper and go quiet
            self._accepting = False
        self._hook = None

    def _enqueue(self, key: tuple[str, ...], payload: Any) -> None:
        if not self._accepting:
            return
        if len(self._raw) >= self.opts["queue_max_events"]:
            self._overflow += 1
            self.tracker.lossy = True  # a properties update may be among the lost
            if self._overflow == 1 or self._overflow % 10000 == 0:
                log.msg(
                    f"firehose: ERROR: conversion queue full; {self._overflow} Buildbot messages dropped "
                    "before getting a sequence number"
                )
                self.outbox.record_unsequenced_drop("conversion queue full", 1)
            return
        self._raw.append((key, payload, self.reactor.seconds()))
        self._kick()

    def _kick(self) -> None:
        if self._draining is None and self._raw:
            self._draining = task.deferLater(self.reactor, 0, self._drain)
            self._draining.addErrback(log.err, "firehose: conversion failed")
            self._draining.addBoth(self._drained)

    def _drained(self, _: Any) -> None:
        self._draining = None
        self._kick()

    @defer.inlineCallbacks
    def _wait_drained(self) -> Any:
        for _ in range(10000):
            if self._draining is None and not self._raw:
                return
            if self._draining is None:
                self._kick()
            d: defer.Deferred[None] = defer.Deferred()

            def release(result: Any, d: defer.Deferred[None] = d) -> Any:
                d.callback(None)
                return result

            assert self._draining is not None
            self._draining.addBoth(release)
            yield d

    # -- conversion (off the master's path) ----------------------------------------------------

    @defer.inlineCallbacks
    def _drain(self) -> Any:
        done = 0
        while self._raw and self.outbox is not None:
            key, payload, t = self._raw.popleft()
            try:
                if key is _TICK:
                    events = yield self.tracker.tick()
                elif key is _HEARTBEAT:
                    self._emit("master.heartbeat", self._master_data(None), t)
                    events = []
                else:
                    d = self.tracker.handle(key, payload)
                    # Most messages convert at once: take the result without a trip through
                    # inlineCallbacks (a failure is re-raised by the yield).
                    events = d.result if d.called and not isinstance(d.result, Failure) else (yield d)
            except Exception:  # noqa: BLE001 - one bad message must not stop the stream
                log.err(None, f"firehose: cannot convert {key!r}; skipped")
                continue
            for type_, data in events:
                self._emit(type_, data, t)
            done += 1
            if done % 200 == 0:  # let the reactor breathe during a burst
                yield task.deferLater(self.reactor, 0, lambda: None)

    def _emit(self, type_: str, data: dict[str, Any], t: float) -> None:
        """Scrub, validate, number and queue one event; an invalid one is dropped and logged."""
        event = {
            "master": self.master_name,
            "incarnation": self.incarnation,
            "seq": self.seq + 1,
            "type": type_,
            "time": t,
            "data": data,
        }
        # Encode first: most events hold no secret and no URL credentials, and the encoding
        # tells (Redactor.may_change), so they skip the walk over every string.
        body: bytes | None
        try:
            body = dumps(event)
        except (TypeError, ValueError):
            body = None
        if body is None or self.redactor.may_change(body):
            data = event["data"] = self.redactor.scrub_all(data)
            body = None
        try:
            validate_event(event)
            if body is None:
                body = dumps(event)
        except (SchemaError, TypeError, ValueError) as exc:
            log.msg(f"firehose: BUG: dropping an invalid {type_} event ({exc}): {data!r:.500}")
            self.outbox.record_unsequenced_drop(f"invalid {type_}: {exc}")
            return
        self.seq += 1
        self.outbox.put(Item(self.master_name, self.incarnation, self.seq, body))

    def _secrets_for_build(self, buildid: int) -> list[str]:
        """Secret values a running build has rendered (Buildbot records them to redact logs)."""
        botmaster = self._botmaster
        if botmaster is None:  # self.master walks up the service tree: once, not per event
            botmaster = self._botmaster = getattr(self.master, "botmaster", None)
        for builder in getattr(botmaster, "builders", {}).values():
            for build in getattr(builder, "building", ()):
                if getattr(build, "buildid", None) == buildid:
                    props = getattr(build, "properties", None)
                    return list(getattr(props, "_used_secrets", {}) or ())
        return []
