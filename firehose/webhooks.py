"""Webhooks: the server POSTs matching events, in batches, signed, to registered callback URLs.

Each hook is an ordinary hub subscription (transport ``webhook``) fed from the journal, exactly
like a long-poll client: it starts from the hook's stored cursor, so a restart resumes delivery
where it stopped, and a hook that cannot keep up is ended as ``slow`` by the hub and simply
catches up from the journal later.  A slow or dead receiver therefore costs bounded memory and
never delays any other subscriber.

Delivery, per hook: one batch in flight at a time (order is kept); a batch is retried with
exponential backoff until the receiver answers 2xx; the cursor advances (and is persisted)
only after that answer - at-least-once delivery, receivers dedupe by event ``id``.  After
``max_failures`` consecutive failures (or a ``410 Gone``) the hook is disabled and the reason
is shown by the API; ``PATCH {"active": true}`` re-enables it from where it stopped.

Signature: ``X-Firehose-Signature: sha256=<hex HMAC-SHA256 of the raw body with the hook's
secret>``; ``X-Firehose-Timestamp`` repeats the body's ``sent_at`` (which the signature covers),
so receivers can refuse stale replays.  See docs/client.md.

Hooks come from ``POST /api/webhooks`` (``Authorization: Bearer <admin token>``) or from the
``[webhooks]`` table of the server's config file.  Their state (cursor, failures) lives in a
small JSON file next to the journal, written atomically in a thread, never on the reactor.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import secrets
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IResolutionReceiver, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from firehose import __version__
from firehose._http import bearer_token, error_body, json_body
from firehose.backoff import Backoff
from firehose.config import WebhookConfig, apply_config_table  # noqa: F401 (moved; re-exported)
from firehose.cursor import EARLIEST, NOW, CursorError, parse_since
from firehose.event import Event, dumps, loads
from firehose.filters import FilterError, parse_json
from firehose.hub import Hub, Subscription
from firehose.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify  # noqa: F401 (re-exported)

ADMIN_TOKEN_ENV = "FIREHOSE_WEBHOOK_ADMIN_TOKEN"


class WebhookError(ValueError):
    """A hook definition that cannot be used; the message says why."""


# ---------------------------------------------------------------------------------------------
# Hooks and their configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class Hook:
    """One registered webhook and its delivery state (persisted)."""

    id: str
    url: str
    filter: dict[str, list[str]]
    secret: str
    cursor: str | None = None
    active: bool = True
    source: str = "api"
    failures: int = 0
    last_error: str | None = None
    disabled_reason: str | None = None
    delivered: int = 0
    created: float = 0.0
    last_delivery: float | None = None

    def view(self) -> dict[str, Any]:
        """What the API shows: everything but the secret."""
        out = asdict(self)
        del out["secret"]
        return out


# ---------------------------------------------------------------------------------------------
# Receiver addresses: one parser, and which addresses may be reached
# ---------------------------------------------------------------------------------------------
#
# A webhook makes the server open connections where a caller says, so by default it refuses
# every address that is not on the public Internet: loopback, private, link-local (cloud
# metadata at 169.254.169.254), unspecified, multicast, reserved, and IPv6 forms that embed
# such an IPv4 address.  ``allow_networks`` lets an operator open chosen networks.  URLs are
# read by one parser (:func:`parse_url`); an IP literal in any spelling a resolver accepts
# (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.0.0.1.``, ``[::ffff:7f00:1]``) is
# normalised with :mod:`ipaddress` and checked at registration.  A host name is checked when
# delivering: it is resolved, every address is checked, and the connection goes to a checked
# address (so a name that resolves differently the next time cannot bypass the check).

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Bytes of a receiver's answer read (and dropped) before the connection is closed: its
#: status is all we need, and a receiver streaming a body must not cost memory.
ANSWER_LIMIT = 8192

_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressNotAllowed(WebhookError):
    """A receiver address in a range refused by default and not in ``allow_networks``."""


@dataclass(frozen=True)
class Target:
    """A webhook URL as :func:`parse_url` read it: what is checked is what is connected to."""

    scheme: str
    #: An IP address in canonical form, or a lower-case ASCII host name (no trailing dot).
    host: str
    port: int
    #: ``path?query`` (never empty, never a fragment).
    path: str
    #: The host when it is an IP literal.
    address: IPAddress | None

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def uri(self) -> bytes:
        """The URL the HTTP client is given, with the host in canonical form."""
        host = self.host.replace("%", "%25")  # an IPv6 zone, as RFC 6874 writes it
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}{self.path}".encode("ascii")


def parse_url(url: Any) -> Target:
    """Read a webhook URL; raise :class:`WebhookError` naming what is wrong with it.

    Refused: other schemes, a user name or password (``http://good@evil/`` reads differently
    to different parsers), spaces, backslashes and control characters, a numeric host that
    is no valid IPv4 address, and host names that are not plain DNS names.
    """
    if not isinstance(url, str) or not url:
        raise WebhookError("'url' must be an http:// or https:// URL")
    shown = repr(url[:100])
    if len(url) > 2048:
        raise WebhookError("'url' is longer than 2048 characters")
    if any(c in url for c in " \\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookError(f"'url' may not contain spaces, backslashes or control characters: {shown}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookError(f"'url' is not a valid URL ({exc}): {shown}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"'url' must be an http:// or https:// URL, not {shown}")
    if "@" in parts.netloc:
        raise WebhookError(f"'url' may not hold a user name or password (user@host): {shown}")
    address: IPAddress | None
    if parts.netloc.startswith("["):
        try:
            address = ipaddress.IPv6Address(urllib.parse.unquote(parts.hostname))
        except ValueError:
            raise WebhookError(f"'url' has an invalid IPv6 address: {shown}") from None
        host = str(address)
    else:
        host = parts.hostname[:-1] if parts.hostname.endswith(".") else parts.hostname
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise WebhookError(f"'url' has an invalid host name: {shown}") from None
        if not _HOSTNAME.fullmatch(host):
            raise WebhookError(f"'url' has an invalid host name: {shown}")
        address = _numeric_ipv4(host, shown)
        if address is not None:
            host = str(address)
    if port == 0:
        raise WebhookError(f"'url' has port 0: {shown}")
    path = urllib.parse.quote(parts.path or "/", safe="/!$&'()*+,;=:@%~")
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe="/?!$&'()*+,;=:@%~")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path, address)


def _numeric_ipv4(host: str, shown: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a resolver reads in ``host`` (inet_aton: 1 to 4 parts, each decimal,
    0-octal or 0x-hex, the last filling the remaining bytes), or None for a host name."""
    labels = host.split(".")
    if not all(_NUMBER.fullmatch(label) for label in labels):
        return None
    values = []
    for label in labels:
        if label.startswith("0x"):
            values.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if not set(label) <= set("01234567"):
                raise WebhookError(f"'url' has a numeric host that is no IPv4 address: {shown}")
            values.append(int(label, 8))
        else:
            values.append(int(label))
    *head, last = values
    if len(values) > 4 or any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        raise WebhookError(f"'url' has a numeric host that is no IPv4 address: {shown}")
    number = 0
    for v in head:
        number = number * 256 + v
    return ipaddress.IPv4Address((number << 8 * (4 - len(head))) | last)


def parse_networks(values: Any) -> list[IPNetwork]:
    """``allow_networks``: CIDR strings (``127.0.0.0/8``, ``fd00::/8``; an address alone is
    a single host); raise :class:`WebhookError` naming a bad one."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise WebhookError('allow_networks must be a list of networks, like ["127.0.0.0/8"]')
    out: list[IPNetwork] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise WebhookError(f"allow_networks: {value!r} is not a network (CIDR, like 10.0.0.0/8)") from None
    return out


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches: IPv4-mapped, NAT64 (64:ff9b::/96), 6to4."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refused_kind(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default (``loopback``, ``private``...), None if it is a
    public address.  An IPv6 address embedding an IPv4 one is judged by that one."""
    v4 = _embedded_ipv4(address)
    if v4 is not None:
        return refused_kind(v4)
    for kind, flag in (("unspecified", "is_unspecified"), ("loopback", "is_loopback"),
                       ("link-local", "is_link_local"), ("multicast", "is_multicast"),
                       ("private", "is_private"), ("reserved", "is_reserved"),
                       ("site-local", "is_site_local")):
        if getattr(address, flag, False):
            return kind
    return None if address.is_global else "not globally routable"


def check_address(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> None:
    """Raise :class:`AddressNotAllowed` unless ``address`` is public or in ``allow``."""
    v4 = _embedded_ipv4(address)
    if any(a in net for a in (address, v4) if a is not None for net in allow if net.version == a.version):
        return
    kind = refused_kind(address)
    if kind is not None:
        shown = f"{address} ({v4})" if v4 is not None else str(address)
        raise AddressNotAllowed(
            f"address {shown} is not allowed ({kind}): add its network to [webhooks] allow_networks "
            "(or --webhook-allow-network) to deliver there"
        )


def check_url(url: Any, allow: Sequence[IPNetwork] = ()) -> str:
    """Parse ``url`` and check its host if it is an IP address (a name is checked at each
    delivery, once resolved); return it unchanged."""
    target = parse_url(url)
    if target.address is not None:
        check_address(target.address, allow)
    return str(url)


def check_filter(flt: Any) -> dict[str, list[str]]:
    try:
        return parse_json(flt if flt is not None else {}).as_dict()
    except FilterError as exc:
        raise WebhookError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------


class MemoryHookStore:
    """Keeps hook state in memory (tests, ``:memory:`` journals)."""

    def __init__(self, initial: dict[str, dict[str, Any]] | None = None) -> None:
        self.state: dict[str, dict[str, Any]] = dict(initial or {})
        self.saves = 0

    def load(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.state.items()}

    def save(self, state: dict[str, dict[str, Any]]) -> defer.Deferred[None]:
        self.state = state
        self.saves += 1
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class JSONFileHookStore:
    """Hook state in a JSON file, replaced atomically (write, fsync, rename) in a thread.

    Saves are coalesced: while one write runs, later states replace each other and only the
    newest is written next.  The file holds the hooks' secrets, so it is created mode 0600.
    """

    log = Logger()

    def __init__(self, path: str, reactor: Any) -> None:
        from twisted.python.threadpool import ThreadPool

        self.path = path
        self.reactor = reactor
        self._pool = ThreadPool(1, 1, "firehose-webhook-state")
        self._pool.start()
        self._writing = False
        self._next: dict[str, dict[str, Any]] | None = None
        self._idle: list[defer.Deferred[None]] = []

    def load(self) -> dict[str, dict[str, Any]]:
        """Read the file (once, at start-up, before the server listens)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise WebhookError(f"cannot read webhook state {self.path!r}: {exc}") from None
        return dict(data.get("hooks", {}))

    def save(self, state: dict[str, dict[str, Any]]) -> defer.Deferred[None]:
        self._next = state
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        if not self._writing:
            self._write_next()
        return d

    def _write_next(self) -> None:
        from twisted.internet.threads import deferToThreadPool

        state, self._next = self._next, None
        waiting, self._idle = self._idle, []
        self._writing = True
        d = deferToThreadPool(self.reactor, self._pool, write_json_atomically, self.path, {"hooks": state})

        def done(result: Any) -> None:
            self._writing = False
            if hasattr(result, "getErrorMessage"):
                self.log.error("cannot save webhook state to {path}: {e}", path=self.path,
                               e=result.getErrorMessage())
            if self._next is not None:
                self._write_next()
            else:
                waiting.extend(self._idle)
                self._idle = []
            for w in waiting:
                w.callback(None)

        d.addBoth(done)

    def close(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.succeed(None)
        if self._writing or self._next is not None:
            d = defer.Deferred()
            self._idle.append(d)
        d.addBoth(lambda _: self._pool.stop())
        return d


def write_json_atomically(path: str, obj: Any) -> None:
    """Write ``obj`` to ``path`` so that a crash leaves either the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".webhooks-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------


class _Delivery:
    """One hook's subscription and its delivery loop (the hub's :class:`Sink`)."""

    log = Logger()

    def __init__(self, dispatcher: WebhookDispatcher, hook: Hook) -> None:
        self.dispatcher = dispatcher
        self.hook = hook
        self.sub: Subscription | None = None
        self.buffer: list[Event] = []
        self.gaps: list[dict[str, Any]] = []
        self.inflight: defer.Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.stopped = False
        self.ended = False  # the hub ended the subscription (slow): resubscribe when drained
        self.backoff = Backoff(dispatcher.config.retry_initial, dispatcher.config.retry_max,
                               rand=dispatcher.rand)

    def start(self) -> None:
        hub = self.dispatcher.hub
        try:
            sub = hub.subscribe(self, parse_json(self.hook.filter), self.hook.cursor, "webhook")
        except CursorError as exc:
            self.dispatcher._disable(self.hook, f"stored cursor unusable: {exc}")
            return
        self.sub = sub
        self.ended = False
        sub.start()
        self._kick()

    def stop(self) -> None:
        self.stopped = True
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.inflight is not None:
            d, self.inflight = self.inflight, None
            d.cancel()
        self.buffer.clear()

    # Sink

    def send(self, events: list[Event]) -> None:
        self.buffer.extend(events)
        self._kick()

    def replayed(self, caught_up: bool) -> None:
        """Nothing to do as the replay progresses."""

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        if final:
            self.sub = None
            self.ended = True
            if gap.get("reason") not in ("slow", "error"):
                self.gaps.append(gap)
        else:
            self.gaps.append(gap)
        self._kick()

    # Loop

    def _busy(self) -> bool:
        return self.inflight is not None or self.timer is not None

    def _kick(self) -> None:
        if self.stopped:
            return
        if self.sub is not None:
            # Hold the hub back while a batch is out or enough is waiting: the hub queues (bounded)
            # or ends us as slow, and the journal has everything we did not take.
            if self._busy() or len(self.buffer) >= self.dispatcher.config.batch_size:
                self.sub.pause()
            elif self.sub.paused:
                self.sub.resume()
                if self.stopped:
                    return
        if self._busy():
            return
        if self.buffer or self.gaps:
            self._post()
        elif self.ended and self.sub is None:
            self.start()

    def _post(self) -> None:
        config = self.dispatcher.config
        batch = self.buffer[: config.batch_size]
        gaps = list(self.gaps)
        sent_at = int(self.dispatcher.clock.seconds())
        body = (
            b'{"hook":' + dumps(self.hook.id)
            + b',"sent_at":' + dumps(sent_at)
            + b',"events":[' + b",".join(e.encoded for e in batch) + b"]"
            + (b',"gaps":' + dumps(gaps) if gaps else b"")
            + b"}"
        )
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [f"firehose-webhooks/{__version__}".encode()],
            b"X-Firehose-Hook": [self.hook.id.encode()],
            b"X-Firehose-Delivery": [
                (f"{batch[0].cursor}..{batch[-1].cursor}" if batch else f"gap-{sent_at}").encode()
            ],
            TIMESTAMP_HEADER.encode(): [str(sent_at).encode()],
            SIGNATURE_HEADER.encode(): [sign(self.hook.secret, body).encode()],
        }
        if self.sub is not None:
            self.sub.pause()
        d = self.dispatcher.post(self.hook.url, body, headers)
        self.inflight = d
        d.addCallbacks(self._answered, self._failed, callbackArgs=(batch, gaps), errbackArgs=(batch, gaps))

    def _answered(self, code: int, batch: list[Event], gaps: list[dict[str, Any]]) -> None:
        if self.stopped:
            return
        self.inflight = None
        if 200 <= code < 300:
            self._delivered(batch, gaps)
        elif code == 410:
            self.dispatcher._disable(self.hook, "the receiver answered 410 Gone")
        else:
            self._retry(f"receiver answered HTTP {code}")

    def _failed(self, failure: Any, batch: list[Event], gaps: list[dict[str, Any]]) -> None:
        if self.stopped:
            return
        self.inflight = None
        if failure.check(DeliveryError):
            self._retry(str(failure.value))
        else:
            self.log.failure("webhook {id}: delivery failed", failure, id=self.hook.id)
            self._retry(f"delivery failed: {failure.type.__name__}")

    def _delivered(self, batch: list[Event], gaps: list[dict[str, Any]]) -> None:
        hook = self.hook
        del self.buffer[: len(batch)]
        self.gaps = self.gaps[len(gaps):]
        self.backoff.reset()
        hook.failures = 0
        hook.last_error = None
        hook.delivered += len(batch)
        hook.last_delivery = self.dispatcher.clock.seconds()
        if not self.buffer and self.sub is not None:
            hook.cursor = self.sub.cursor  # may skip past events the filter did not match
        elif batch:
            hook.cursor = batch[-1].cursor
        elif gaps:
            hook.cursor = gaps[-1].get("cursor") or hook.cursor
        self.dispatcher.stats["delivered"] += len(batch)
        self.dispatcher._save()
        self._kick()

    def _retry(self, error: str) -> None:
        hook = self.hook
        hook.failures += 1
        hook.last_error = error
        self.dispatcher.stats["failures"] += 1
        if hook.failures >= self.dispatcher.config.max_failures:
            self.dispatcher._disable(
                hook, f"{hook.failures} consecutive failed deliveries; last: {error}"
            )
            return
        delay = self.backoff.next()
        self.log.info("webhook {id}: delivery failed ({error}); retry {n} in {delay:.1f}s",
                      id=hook.id, error=error, n=hook.failures, delay=delay)
        self.dispatcher._save()
        self.timer = self.dispatcher.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self.timer = None
        self._kick()


# ---------------------------------------------------------------------------------------------
# HTTP: connections only to checked addresses, answers read to a bound, sentences for failures
# ---------------------------------------------------------------------------------------------

Resolve = Callable[[str, int], "defer.Deferred[list[IPAddress]]"]


def resolver(reactor: Any) -> Resolve:
    """Resolve a host name with the reactor's resolver (``getaddrinfo`` in a thread)."""

    def resolve(host: str, port: int) -> defer.Deferred[list[IPAddress]]:
        found: list[IPAddress] = []
        done: defer.Deferred[list[IPAddress]] = defer.Deferred()

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: Any) -> None:
                """Nothing to keep."""

            def addressResolved(self, address: Any) -> None:
                found.append(ipaddress.ip_address(address.host))

            def resolutionComplete(self) -> None:
                done.callback(found)

        reactor.nameResolver.resolveHostName(Receiver(), host, port)
        return done

    return resolve


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    """Connects to ``host`` only at an address :func:`check_address` accepts: an IP literal as
    it is, a name resolved here, every address checked, then a checked one connected to (in
    order, the next after a failure), never resolved again by someone else."""

    def __init__(self, factory: CheckedEndpointFactory, host: str, port: int) -> None:
        self.endpoints, self.host, self.port = factory, host, port

    def connect(self, protocol_factory: Any) -> defer.Deferred[Any]:
        try:
            literal: IPAddress | None = ipaddress.ip_address(self.host)
        except ValueError:
            literal = None
        if literal is not None:
            found: defer.Deferred[list[IPAddress]] = defer.succeed([literal])
        else:
            found = self.endpoints.resolve(self.host, self.port)

        def checked(addresses: list[IPAddress]) -> defer.Deferred[Any]:
            if not addresses:
                raise error.DNSLookupError(self.host)
            for address in addresses:
                check_address(address, self.endpoints.allow)
            return self._connect(list(addresses), protocol_factory)

        return found.addCallback(checked)

    def _connect(self, addresses: list[IPAddress], protocol_factory: Any) -> defer.Deferred[Any]:
        address = addresses.pop(0)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        kind = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
        d = kind(self.endpoints.reactor, str(address), self.port, timeout=self.endpoints.timeout).connect(
            protocol_factory)
        if addresses:
            d.addErrback(lambda f: f if f.check(defer.CancelledError) else self._connect(addresses, protocol_factory))
        return d


@implementer(IAgentEndpointFactory)
class CheckedEndpointFactory:
    """The endpoints of the dispatcher's HTTP agent: every connection goes to a checked address.

    :param allow: networks accepted although refused by default.
    :param resolve: host name -> addresses; default the reactor's resolver.
    """

    def __init__(self, reactor: Any, allow: Sequence[IPNetwork], timeout: float,
                 resolve: Resolve | None = None) -> None:
        from twisted.web.client import BrowserLikePolicyForHTTPS

        self.reactor, self.allow, self.timeout = reactor, list(allow), timeout
        self.resolve = resolve or resolver(reactor)
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> Any:
        host = urllib.parse.unquote(uri.host.decode("ascii"))
        endpoint = _CheckedEndpoint(self, host, uri.port)
        if uri.scheme == b"https":
            # TLS checks the certificate against the URL's host, whatever address we reached.
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory (``FileBodyProducer`` would need a cooperator)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.length = data, len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        """Written at once: nothing to pause."""

    def resumeProducing(self) -> None:
        """Written at once: nothing to resume."""

    def stopProducing(self) -> None:
        """Written at once: nothing to stop."""


class _Answer(Protocol):
    """Reads a receiver's answer body and drops it; past ``limit`` bytes it stops reading and
    the connection is closed.  ``done`` fires when the body ended, either way; cancelling
    it (the delivery timed out) closes the connection too."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.done: defer.Deferred[None] = defer.Deferred(lambda _: self._stop())

    def dataReceived(self, data: bytes) -> None:
        if self.received > self.limit:
            return  # already stopping: what still arrives is not read
        self.received += len(data)
        if self.received > self.limit:
            self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()  # stops reading at once (TCP and TLS alike)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class DeliveryError(Exception):
    """A delivery failed; the message is a sentence for ``last_error``."""


def describe_failure(failure: Failure, target: str, timeout: float) -> str:
    """A sentence saying why a POST to ``target`` (host:port) failed, never a repr."""
    from twisted.web._newclient import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

    if failure.check(defer.CancelledError, TimeoutError, error.TimeoutError, error.ConnectingCancelledError):
        return f"timed out after {timeout:g} s"
    if failure.check(WebhookError):
        return str(failure.value)
    if failure.check(error.ConnectionRefusedError):
        return f"connection refused by {target}"
    if failure.check(error.DNSLookupError):
        return f"cannot resolve the host of {target}"
    if failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed):
        reasons = getattr(failure.value, "reasons", None) or []
        if any("SSL" in type(r.value).__module__ or "ssl" in type(r.value).__module__ for r in reasons):
            return f"the TLS handshake with {target} failed"
        return f"the connection to {target} closed before an answer"
    if failure.check(error.ConnectError):
        why = getattr(failure.value, "osError", None) or type(failure.value).__name__
        return f"cannot connect to {target}: {why}"
    return f"delivery to {target} failed: {type(failure.value).__name__}: {str(failure.value)[:200]}"


class WebhookDispatcher:
    """All hooks of one server: registration, delivery, persistence.

    :param agent: the ``IAgent`` that POSTs (``treq.testing.RequestTraversalAgent`` in tests);
        default an ``Agent`` with its own pool whose connections go only to checked addresses
        (:class:`CheckedEndpointFactory`).
    :param clock: ``IReactorTime`` for retries, timeouts and timestamps (the reactor, unless
        ``agent`` is given).
    :param rand: a function returning a float in [0, 1) for the retry jitter (tests pass
        ``random.Random(0).random``); default :func:`random.random`.
    :param resolve: host name -> addresses for the default agent (tests).
    """

    log = Logger()

    def __init__(
        self,
        hub: Hub,
        config: WebhookConfig,
        store: Any,
        clock: Any,
        agent: Any = None,
        rand: Callable[[], float] | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        self.hub = hub
        self.config = config
        self.store = store
        self.clock = clock
        self.rand = rand
        self.allow = parse_networks(config.allow_networks)
        self._pool: Any = None
        if agent is None:
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(clock, persistent=True)
            self._pool.maxPersistentPerHost = 2
            agent = Agent.usingEndpointFactory(
                clock, CheckedEndpointFactory(clock, self.allow, config.timeout, resolve), pool=self._pool)
        self.agent = agent
        self.hooks: dict[str, Hook] = {}
        self._deliveries: dict[str, _Delivery] = {}
        self.stats: dict[str, int] = {"delivered": 0, "failures": 0}
        self.loaded = False
        self.running = False

    # Lifecycle

    def load(self) -> None:
        """Read stored hooks and apply the configured ones (before the server listens);
        raises :class:`WebhookError` for an unreadable state file."""
        now = self.clock.seconds()
        for hid, raw in self.store.load().items():
            try:
                self.hooks[hid] = Hook(**raw)
            except TypeError as exc:
                raise WebhookError(f"webhook state for {hid!r} is unreadable: {exc}") from None
        for name, spec in self.config.hooks.items():
            try:
                check_url(spec["url"], self.allow)
            except WebhookError as exc:
                raise WebhookError(f"[webhooks.hooks.{name}]: {exc}") from None
            flt = check_filter(spec.get("filter"))
            hook = self.hooks.get(name)
            if hook is None:
                self.hooks[name] = Hook(name, spec["url"], flt, str(spec["secret"]), self.hub.head_cursor,
                                        source="config", created=now)
            else:
                hook.url, hook.filter, hook.secret, hook.source = spec["url"], flt, str(spec["secret"]), "config"
        for hid in [h.id for h in self.hooks.values() if h.source == "config" and h.id not in self.config.hooks]:
            del self.hooks[hid]  # removed from the config file
        self.loaded = True

    def start(self) -> None:
        """Start delivering to every active hook."""
        if not self.loaded:
            self.load()
        self.running = True
        for hook in self.hooks.values():
            if hook.active:
                self._start(hook)
        self._save()

    def stop(self) -> defer.Deferred[None]:
        """Stop delivering (in-flight POSTs are abandoned and resent after a restart), save."""
        was_running, self.running = self.running, False
        for delivery in self._deliveries.values():
            delivery.stop()
        self._deliveries.clear()
        # Never save a state that was not loaded: it would wipe the stored hooks.
        d = self.store.save(self._state()) if was_running else defer.succeed(None)
        d.addCallback(lambda _: self.store.close())
        if self._pool is not None:
            d.addCallback(lambda _: self._pool.closeCachedConnections())
        return d

    def _start(self, hook: Hook) -> None:
        delivery = self._deliveries[hook.id] = _Delivery(self, hook)
        delivery.start()

    def _state(self) -> dict[str, dict[str, Any]]:
        return {h.id: asdict(h) for h in self.hooks.values()}

    def _save(self) -> None:
        if self.loaded:
            self.store.save(self._state())

    def _disable(self, hook: Hook, reason: str) -> None:
        self.log.warn("webhook {id} disabled: {reason}", id=hook.id, reason=reason)
        hook.active = False
        hook.disabled_reason = reason
        delivery = self._deliveries.pop(hook.id, None)
        if delivery is not None:
            delivery.stop()
        self._save()

    # HTTP

    def post(self, url: str, body: bytes, headers: dict[bytes, list[bytes]]) -> defer.Deferred[int]:
        """POST; fires with the status code or fails with a :class:`DeliveryError` whose
        message is a sentence.  Never raises.  The whole delivery (resolving, connecting,
        the answer) is bounded by ``config.timeout``; at most :data:`ANSWER_LIMIT` bytes of
        the answer are read, and dropped: a receiver's body costs no memory.  No redirect
        is followed (it could lead anywhere)."""
        timeout = self.config.timeout
        try:
            target = parse_url(url)
        except WebhookError as exc:
            return defer.fail(DeliveryError(str(exc)))
        d = defer.maybeDeferred(self.agent.request, b"POST", target.uri(), Headers(headers), _Body(body))

        def answered(response: Any) -> defer.Deferred[int]:
            answer = _Answer(ANSWER_LIMIT)
            response.deliverBody(answer)
            return answer.done.addCallback(lambda _: response.code)

        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()  # whatever it waits on: the resolver, the connection, the answer

        def failed(failure: Failure) -> Failure:
            if expired:
                return Failure(DeliveryError(f"timed out after {timeout:g} s"))
            return Failure(DeliveryError(describe_failure(failure, target.netloc, timeout)))

        d.addCallback(answered)
        timer = self.clock.callLater(timeout, expire)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        d.addErrback(failed)
        return d

    # Registration (the API)

    def add(
        self,
        url: Any,
        flt: Any = None,
        secret: str | None = None,
        since: str | None = None,
        hook_id: str | None = None,
    ) -> Hook:
        """Register a hook; it receives events after ``since`` (default: from now on)."""
        check_url(url, self.allow)
        normal = check_filter(flt)
        start = parse_since(since)  # raises CursorError for anything but now, earliest, a cursor
        if start == NOW:
            cursor: str | None = self.hub.head_cursor
        elif start == EARLIEST:
            cursor = EARLIEST
        else:
            self.hub.resolve(since)  # raises CursorError for a cursor ahead of the stream
            cursor = str(start)
        hid = hook_id or secrets.token_hex(6)
        if hid in self.hooks:
            raise WebhookError(f"a webhook {hid!r} already exists")
        hook = Hook(hid, str(url), normal, secret or secrets.token_urlsafe(24), cursor,
                    created=self.clock.seconds())
        self.hooks[hid] = hook
        if self.running:
            self._start(hook)
        self._save()
        return hook

    def remove(self, hid: str) -> None:
        hook = self.hooks[hid]
        if hook.source == "config":
            raise WebhookError(f"webhook {hid!r} comes from the config file; remove it there")
        delivery = self._deliveries.pop(hid, None)
        if delivery is not None:
            delivery.stop()
        del self.hooks[hid]
        self._save()

    def enable(self, hid: str) -> Hook:
        """Re-enable a disabled hook: delivery resumes at its stored cursor."""
        hook = self.hooks[hid]
        if not hook.active:
            hook.active = True
            hook.failures = 0
            hook.disabled_reason = None
            if self.running:
                self._start(hook)
            self._save()
        return hook

    def disable(self, hid: str, reason: str = "disabled through the API") -> Hook:
        hook = self.hooks[hid]
        if hook.active:
            self._disable(hook, reason)
        return hook

    def view(self, hook: Hook) -> dict[str, Any]:
        out = hook.view()
        delivery = self._deliveries.get(hook.id)
        out["queued"] = len(delivery.buffer) if delivery is not None else 0
        out["retrying"] = bool(delivery is not None and delivery.timer is not None)
        return out


# ---------------------------------------------------------------------------------------------
# The API: /api/webhooks
# ---------------------------------------------------------------------------------------------


class WebhookAPI(Resource):
    """``/api/webhooks`` (list, register) and ``/api/webhooks/<id>`` (show, change, delete).

    Every call needs ``Authorization: Bearer <admin token>``; the token is compared in constant
    time.  Without a configured admin token the API answers 403 to everyone.
    """

    isLeaf = True

    def __init__(self, dispatcher: WebhookDispatcher, admin_token: str | None) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.admin_token = admin_token

    def render(self, request: Request) -> bytes:
        if not self.admin_token:
            return error_body(request, 403, "no_admin_token",
                              "the webhook API is off: start the server with --webhook-admin-token")
        token = bearer_token(request)
        if token is None or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            request.setHeader(b"www-authenticate", b'Bearer realm="firehose webhooks"')
            return error_body(request, 401, "unauthorized", "send Authorization: Bearer <admin token>")
        path = [p.decode("utf-8", "replace") for p in request.postpath or () if p]
        method = (request.method or b"GET").decode()
        try:
            if not path:
                if method == "GET":
                    hooks = sorted(self.dispatcher.hooks.values(), key=lambda h: (h.created, h.id))
                    return json_body(request, 200, {"webhooks": [self.dispatcher.view(h) for h in hooks]})
                if method == "POST":
                    return self._create(request)
            elif len(path) == 1:
                hook = self.dispatcher.hooks.get(path[0])
                if hook is None:
                    return error_body(request, 404, "not_found", f"no webhook {path[0]!r}")
                if method == "GET":
                    return json_body(request, 200, self.dispatcher.view(hook))
                if method == "DELETE":
                    self.dispatcher.remove(hook.id)
                    return json_body(request, 200, {"deleted": hook.id})
                if method == "PATCH":
                    return self._change(request, hook)
            else:
                return error_body(request, 404, "not_found", "no such resource")
        except WebhookError as exc:
            return error_body(request, 409 if "exists" in str(exc) or "config" in str(exc) else 400,
                              "bad_webhook", str(exc))
        request.setHeader(b"allow", b"GET, POST" if not path else b"GET, PATCH, DELETE")
        return error_body(request, 405, "method_not_allowed", f"{method} is not allowed here")

    def _json(self, request: Request) -> dict[str, Any]:
        try:
            assert request.content is not None
            body = loads(request.content.read() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise WebhookError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise WebhookError("the body must be a JSON object")
        return body

    def _create(self, request: Request) -> bytes:
        body = self._json(request)
        unknown = set(body) - {"url", "filter", "secret", "since", "id"}
        if unknown:
            raise WebhookError(f"unknown fields {sorted(unknown)}: use url, filter, secret, since, id")
        secret = body.get("secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
            raise WebhookError("'secret' must be a string of at least 16 characters")
        hook_id = body.get("id")
        if hook_id is not None and (not isinstance(hook_id, str) or not _id_ok(hook_id)):
            raise WebhookError("'id' may hold 1-64 letters, digits, '.', '_' and '-'")
        try:
            hook = self.dispatcher.add(body.get("url"), body.get("filter"), secret, body.get("since"), hook_id)
        except CursorError as exc:
            return error_body(request, 400, "bad_cursor", str(exc))
        out = self.dispatcher.view(hook)
        out["secret"] = hook.secret  # shown once, at registration
        request.setHeader(b"location", f"/api/webhooks/{hook.id}".encode())
        return json_body(request, 201, out)

    def _change(self, request: Request, hook: Hook) -> bytes:
        body = self._json(request)
        if set(body) != {"active"} or not isinstance(body["active"], bool):
            raise WebhookError('PATCH takes {"active": true} or {"active": false}')
        if body["active"]:
            self.dispatcher.enable(hook.id)
        else:
            self.dispatcher.disable(hook.id)
        return json_body(request, 200, self.dispatcher.view(hook))


def _id_ok(text: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text) is not None


def mount(root: Resource, dispatcher: WebhookDispatcher, admin_token: str | None) -> None:
    """Put ``/api/webhooks`` under the site's ``/api`` (made here if nothing else made it)."""
    api = root.children.get(b"api")
    if api is None:
        api = Resource()
        root.putChild(b"api", api)
    api.putChild(b"webhooks", WebhookAPI(dispatcher, admin_token))


def make_dispatcher(hub: Hub, config: WebhookConfig, db: str, clock: Any) -> WebhookDispatcher:
    """The dispatcher a server runs: state in ``config.state_path`` or next to the journal."""
    path = config.state_path or (None if db == ":memory:" else db + ".webhooks.json")
    store: Any = JSONFileHookStore(path, clock) if path else MemoryHookStore()
    return WebhookDispatcher(hub, config, store, clock)

