"""Webhook URLs as an attack surface: which receivers may be reached, however the URL is spelt.

No test here sends anything anywhere: refused addresses are only handed to the validator, the
API and the dispatcher's endpoints (over a ``MemoryReactorClock``, which records connection
attempts and opens none), and refusals are asserted.
"""

from __future__ import annotations

import ipaddress
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.client import URI
from twisted.web.resource import Resource

from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.webhooks import (
    AddressNotAllowed,
    CheckedEndpointFactory,
    MemoryHookStore,
    WebhookConfig,
    WebhookDispatcher,
    WebhookError,
    apply_config_table,
    check_address,
    check_url,
    parse_networks,
    parse_url,
)
from tests.unit.helpers import webhook_site

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Ranges refused by default, written out from the RFCs (independently of ipaddress's flags).
FORBIDDEN_V4 = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/29", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32")]
FORBIDDEN_V6 = [ipaddress.IPv6Network(n) for n in (
    "::1/128", "::/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32")]


def v4_spellings(address: ipaddress.IPv4Address) -> st.SearchStrategy[str]:
    """Every way a resolver (inet_aton) reads this address: 1 to 4 parts, each decimal, octal
    or hex, the last holding the remaining bytes; and with a trailing dot."""
    n = int(address)
    b = address.packed

    def part(value: int) -> st.SearchStrategy[str]:
        return st.sampled_from([str(value), hex(value), "0" + oct(value)[2:], "0X" + format(value, "x")])

    splits = [[n], [b[0], n & 0xFFFFFF], [b[0], b[1], n & 0xFFFF], list(b)]
    return st.sampled_from(splits).flatmap(
        lambda values: st.tuples(*(part(v) for v in values), st.sampled_from(["", "."]))
    ).map(lambda t: ".".join(t[:-1]) + t[-1])


def v6_spellings(address: ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    forms = [address.compressed, address.exploded, address.compressed.upper()]
    if address.is_link_local:
        forms.append(address.compressed + "%25eth0")
    return st.sampled_from(forms).map(lambda text: f"[{text}]")


def url_around(host: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(["http", "https", "HTTP"]), host,
                     st.sampled_from(["", ":80", ":8443", ":9"]),
                     st.sampled_from(["", "/", "/hook?x=1", "/a/b#frag"])).map(lambda t: f"{t[0]}://{t[1]}{t[2]}{t[3]}")


def in_network(networks: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(networks).flatmap(
        lambda net: st.integers(int(net.network_address), int(net.broadcast_address)).map(
            lambda i: (net, type(net.network_address)(i))))


forbidden_v4 = in_network(FORBIDDEN_V4)
forbidden_v6 = in_network(FORBIDDEN_V6)


@st.composite
def forbidden_urls(draw: Any) -> tuple[Any, Address, str]:
    """A URL whose host is an address in a forbidden range, in one of its many spellings:
    IPv4 (any inet_aton form), IPv6, or IPv6 embedding a forbidden IPv4 (mapped, NAT64, 6to4)."""
    kind = draw(st.sampled_from(["v4", "v6", "mapped", "nat64", "6to4"]))
    if kind == "v6":
        net, address = draw(forbidden_v6)
        return net, address, draw(url_around(v6_spellings(address)))
    net, v4 = draw(forbidden_v4)
    if kind == "v4":
        return net, v4, draw(url_around(v4_spellings(v4)))
    embedded = {
        "mapped": ipaddress.IPv6Address(0xFFFF << 32 | int(v4)),
        "nat64": ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4)),
        "6to4": ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80)),
    }[kind]
    spelt = st.sampled_from([f"[{embedded.compressed}]", f"[{embedded.exploded}]"]
                            + ([f"[::ffff:{v4}]"] if kind == "mapped" else []))
    return net, v4, draw(url_around(spelt))


@given(forbidden_urls())
def test_forbidden_addresses_refused_in_every_spelling(case: tuple[Any, Address, str]) -> None:
    """An address in a forbidden range (loopback, private, link-local, shared, multicast,
    reserved, unspecified, documentation), spelt in any form a resolver reads (decimal, octal,
    hex, short, trailing dot, IPv6 compressed or not, upper case, zone, IPv4-mapped, NAT64,
    6to4), is refused with a message naming the address; allowing its network accepts it."""
    net, address, url = case
    with pytest.raises(AddressNotAllowed, match=r"^address \S+( \(\S+\))? is not allowed \(") as refused:
        check_url(url)
    assert str(address) in str(refused.value)
    got = ipaddress.ip_address(str(parse_url(url).address).split("%")[0])  # what is connected to
    assert got == address or (isinstance(got, ipaddress.IPv6Address) and address in (
        got.ipv4_mapped, got.sixtofour, ipaddress.IPv4Address(int(got) & 0xFFFFFFFF)))
    assert check_url(url, [net]) == url


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
       st.lists(st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "::1/128", "fd00::/8", "8.8.8.0/24"]), max_size=3))
def test_decision_equals_the_ipaddress_reference(address: Address, allowed: list[str]) -> None:
    """For any address and allow-list the decision is the reference one: accepted if it (or
    the IPv4 address it embeds) is in an allowed network, else refused exactly when
    ipaddress calls it private, loopback, link-local, multicast, reserved, unspecified,
    site-local or not global; and its URL spelling gets the same decision."""
    networks = parse_networks(allowed)

    def embedded(a: Address) -> ipaddress.IPv4Address | None:
        if isinstance(a, ipaddress.IPv4Address):
            return None
        if a.ipv4_mapped:
            return a.ipv4_mapped
        if a in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
        return a.sixtofour

    def internal(a: Address) -> bool:
        inner = embedded(a)
        if inner is not None:
            return internal(inner)
        return (a.is_private or a.is_loopback or a.is_link_local or a.is_multicast or a.is_reserved
                or a.is_unspecified or getattr(a, "is_site_local", False) or not a.is_global)

    inner = embedded(address)
    expected = any(x in n for x in (address, inner) if x is not None for n in networks if n.version == x.version) \
        or not internal(address)
    try:
        check_address(address, networks)
        decided = True
    except AddressNotAllowed:
        decided = False
    assert decided == expected
    host = f"[{address}]" if address.version == 6 else str(address)
    try:
        check_url(f"http://{host}/hook", networks)
        by_url = True
    except AddressNotAllowed:
        by_url = False
    assert by_url == expected


@pytest.mark.parametrize("url, message", [
    ("http://user:pass@r.test/", "user name or password"),
    ("http://r.test@127.0.0.1/", "user name or password"),
    ("http://r.test\\@127.0.0.1/", "backslashes"),
    ("http://r .test/", "spaces"),
    ("http://r.test/\x00", "control characters"),
    ("http://256.0.0.1/", "numeric host that is no IPv4"),
    ("http://1.2.3.4.5/", "numeric host that is no IPv4"),
    ("http://0x100000000/", "numeric host that is no IPv4"),
    ("http://09.0.0.1/", "numeric host that is no IPv4"),
    ("http://[127.0.0.1]/", "cannot be in brackets"),
    ("http://[fe80::zz]/", "not a valid URL"),
    ("http://[::1/", "not a valid URL"),
    ("http://r.test:99999/", "not a valid URL"),
    ("http://r.test:0/", "port 0"),
    ("http://r..test/", "invalid host name"),
    ("http://r%2etest/", "invalid host name"),
    ("ftp://r.test/", "http:// or https://"),
    ("http:///path", "http:// or https://"),
    ("http://2130706433/", "address 127.0.0.1 is not allowed (loopback)"),
    ("http://0x7f.1/", "address 127.0.0.1 is not allowed (loopback)"),
    ("http://0177.0.0.01./", "address 127.0.0.1 is not allowed (loopback)"),
    ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is not allowed (link-local)"),
    ("http://[::ffff:169.254.169.254]/", "address ::ffff:a9fe:a9fe (169.254.169.254) is not allowed (link-local)"),
    ("http://[::]/", "address :: is not allowed (unspecified)"),
    ("http://\uff11\uff12\uff17.0.0.1/", "address 127.0.0.1 is not allowed (loopback)"),
])
def test_confusing_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    """URL forms that parsers read differently (userinfo, backslashes, numeric hosts in odd
    bases, brackets, full-width digits) are refused, each with a message saying why."""
    with pytest.raises(WebhookError) as refused:
        check_url(url)
    assert message in str(refused.value)


@pytest.mark.parametrize("url, netloc", [
    ("https://ci-bot.example/firehose", "ci-bot.example:443"),
    ("http://CI.Example.:8080/x?y=1#z", "ci.example:8080"),
    ("http://93.184.215.14/", "93.184.215.14:80"),
    ("http://[2606:4700::1]:8443/", "[2606:4700::1]:8443"),
])
def test_public_and_named_receivers_are_accepted(url: str, netloc: str) -> None:
    """Public IP literals and host names pass registration (a name is checked once resolved,
    at each delivery); the parsed target is canonical."""
    assert check_url(url) == url
    assert parse_url(url).netloc == netloc


def test_allow_networks_option() -> None:
    """``allow_networks`` takes CIDR networks (a bad one is an error naming it), from the TOML
    table; the dispatcher refuses a config-file hook outside them when it loads, and takes one
    inside them.  Nothing is delivered: the dispatchers are never started, and their memory
    reactor records that no connection was even attempted."""
    cfg = apply_config_table({"allow_networks": ["127.0.0.0/8", "::1"]}, WebhookConfig())
    assert cfg.allow_networks == ["127.0.0.0/8", "::1"]
    for bad in (["10.0.0.0/33"], "127.0.0.0/8", ["nope"]):
        with pytest.raises(WebhookError, match="allow_networks"):
            apply_config_table({"allow_networks": bad}, WebhookConfig())
    hub = Hub(MemoryJournal(epoch="e1"))
    hooks = {"inside": {"url": "http://10.1.2.3/hook", "secret": "s" * 16}}
    refused = WebhookDispatcher(hub, WebhookConfig(hooks=dict(hooks)), MemoryHookStore(), MemoryReactorClock())
    with pytest.raises(WebhookError, match=r"\[webhooks.hooks.inside\]: address 10.1.2.3 is not allowed \(private\)"):
        refused.load()
    reactor = MemoryReactorClock()
    allowed = WebhookDispatcher(hub, WebhookConfig(hooks=dict(hooks), allow_networks=["10.1.0.0/16"]),
                                MemoryHookStore(), reactor)
    allowed.load()
    assert "inside" in allowed.hooks
    assert reactor.tcpClients == [] and reactor.getDelayedCalls() == []


def test_api_refuses_internal_receivers_with_400() -> None:
    """``POST /api/webhooks`` with a loopback, private or cloud-metadata URL answers 400
    ``bad_webhook`` naming the address and registers nothing; with its network allowed (the
    loopback range here: no hook to an address off this machine is ever registered) it
    registers."""
    hub = Hub(MemoryJournal(epoch="e1"))
    clock = MemoryReactorClock()
    cases = (
        ([], 400, ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1:8080/", "http://2130706433/")),
        (["127.0.0.0/8"], 201, ("http://127.0.0.2:8080/", "http://2130706433/", "http://0x7f.1:9/")),
    )
    for allow, expected, urls in cases:
        dispatcher = WebhookDispatcher(hub, WebhookConfig(allow_networks=allow), MemoryHookStore(), clock,
                                       agent=RequestTraversalAgent(Resource()))
        site = webhook_site(dispatcher, "adm")
        api = StubTreq(site)
        for url in urls:
            resp = api.post("http://x/api/webhooks", json={"url": url}, headers={"Authorization": "Bearer adm"}).result
            assert resp.code == expected, url
            if expected == 400:
                body = json.loads(api.content(resp).result)
                assert body["error"] == "bad_webhook" and "is not allowed" in body["message"]
        assert len(dispatcher.hooks) == (0 if expected == 400 else 3)
    assert clock.tcpClients == []


class FakeResolver:
    """Answers host names from a table, recording what was asked; nothing leaves the process."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table, self.asked = table, []

    def __call__(self, host: str, port: int) -> defer.Deferred[list[Any]]:
        self.asked.append(host)
        return defer.succeed([ipaddress.ip_address(a) for a in self.table.get(host, [])])


def connect(endpoints: CheckedEndpointFactory, url: bytes) -> defer.Deferred[Any]:
    from twisted.internet.protocol import Factory, Protocol

    return endpoints.endpointForURI(URI.fromBytes(url)).connect(Factory.forProtocol(Protocol))


def test_names_are_resolved_checked_and_the_checked_address_connected() -> None:
    """A host name is resolved once per connection, every address it resolves to is checked
    (one refused address refuses the lot), and the connection goes to the checked address,
    not to the name (so a second resolution cannot change where it goes)."""
    reactor = MemoryReactorClock()
    resolve = FakeResolver({"rebind.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.1"],
                            "metadata.test": ["169.254.169.254"]})
    endpoints = CheckedEndpointFactory(reactor, parse_networks(["127.0.0.0/8"]), 5.0, resolve)
    for name, address in (("mixed.test", "10.0.0.1"), ("metadata.test", "169.254.169.254")):
        failure = connect(endpoints, f"http://{name}:8000/".encode())
        assert str(failure.result.value).startswith(f"address {address} is not allowed")
        failure.addErrback(lambda _: None)
    unknown = connect(endpoints, b"http://unknown.test/")
    assert "DNSLookupError" in repr(unknown.result)
    unknown.addErrback(lambda _: None)
    assert reactor.tcpClients == []  # nothing was attempted
    connect(endpoints, b"http://rebind.test:8000/")
    connect(endpoints, b"http://[::ffff:127.0.0.1]:8001/")
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("127.0.0.1", 8000), ("127.0.0.1", 8001)]
    assert resolve.asked == ["mixed.test", "metadata.test", "unknown.test", "rebind.test"]


class Wire:
    """A dispatcher with its real HTTP agent over a MemoryReactorClock: each connection it
    opens is handed a StringTransport, and the test plays the receiver."""

    def __init__(self, **config: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal)
        cfg = WebhookConfig(allow_networks=["127.0.0.0/8", "::1/128"], retry_initial=1, retry_max=1,
                            batch_size=5, **config)
        self.dispatcher = WebhookDispatcher(self.hub, cfg, MemoryHookStore(), self.reactor, rand=random.Random(0).random,
                                            resolve=FakeResolver({"metadata.test": ["169.254.169.254"]}))
        self.dispatcher.start()
        self.connected = 0

    def accept(self) -> tuple[Any, StringTransport]:
        """Connect the next connection attempt; return its protocol and transport."""
        _, _, factory, _, _ = self.reactor.tcpClients[self.connected]
        self.connected += 1
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        assert transport.value().startswith(b"POST ")
        return protocol, transport


def test_a_huge_answer_costs_a_bounded_read() -> None:
    """A receiver answering with a body of hundreds of MB: the dispatcher reads at most
    ANSWER_LIMIT (plus the chunk in hand), drops it, closes the connection, and the delivery
    counts by its status: 200 delivered, 500 a failure retried."""
    from firehose.webhooks import ANSWER_LIMIT
    from tests.unit.helpers import batch

    w = Wire()
    hook = w.dispatcher.add("http://127.0.0.1:9/hook", secret="h" * 16)
    w.journal.append(batch(1, 2))
    chunk = b"x" * 65536
    for status, delivered in ((500, 0), (200, 2)):
        if status == 200:
            w.reactor.advance(1)  # the retry
        protocol, transport = w.accept()
        protocol.dataReceived(f"HTTP/1.1 {status} X\r\nContent-Length: 1000000000\r\n\r\n".encode())
        fed = 0
        while not transport.disconnecting and fed < 500 * 2**20:
            protocol.dataReceived(chunk)
            fed += len(chunk)
        assert transport.disconnecting and fed <= ANSWER_LIMIT + len(chunk)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        protocol.connectionLost(Failure(ConnectionDone()))
        assert hook.delivered == delivered
    assert hook.failures == 0 and hook.last_error is None
    w.dispatcher.stop()


def test_last_error_is_a_sentence() -> None:
    """Each way a delivery fails is told in ``last_error`` as a sentence, never a repr: the
    status, a refused connection, a timeout (connect or answer), a name resolving to a refused
    address; and an IPv6 receiver is reached (it used to raise inside the hub)."""
    from twisted.internet.error import ConnectionDone, ConnectionRefusedError
    from twisted.python.failure import Failure

    from tests.unit.helpers import batch

    w = Wire(timeout=10.0)
    hook = w.dispatcher.add("http://[::1]:9/hook", secret="h" * 16)
    w.journal.append(batch(1, 1))
    assert w.reactor.tcpClients[0][:2] == ("::1", 9)
    protocol, transport = w.accept()
    protocol.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    protocol.connectionLost(Failure(ConnectionDone()))  # not kept for the next attempt
    errors = [hook.last_error]
    w.reactor.advance(1)
    _, _, factory, _, _ = w.reactor.tcpClients[w.connected]
    w.connected += 1
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    errors.append(hook.last_error)
    w.reactor.advance(1)
    protocol, transport = w.accept()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")  # the rest never comes
    w.reactor.advance(10)
    assert transport.disconnecting
    errors.append(hook.last_error)
    w.reactor.advance(1)
    w.connected += 1  # this attempt never connects
    w.reactor.advance(10)
    errors.append(hook.last_error)
    assert errors == ["receiver answered HTTP 503", "connection refused by [::1]:9",
                      "timed out after 10 s", "timed out after 10 s"]
    named = w.dispatcher.add("http://metadata.test/", secret="h" * 16, since="earliest")
    assert named.last_error is not None and named.last_error.startswith(
        "address 169.254.169.254 is not allowed (link-local)")
    assert len(w.reactor.tcpClients) == w.connected  # no attempt for the refused name
    for text in errors + [named.last_error]:
        assert "<" not in text and "Failure" not in text
    w.dispatcher.stop()
