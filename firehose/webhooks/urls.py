"""Receiver addresses: one parser of webhook URLs, and which addresses may be reached.

A webhook makes the server open connections where a caller says, so by default it refuses
every address that is not on the public Internet: loopback, private, link-local (cloud
metadata at 169.254.169.254), unspecified, multicast, reserved, and IPv6 forms that embed
such an IPv4 address.  ``allow_networks`` lets an operator open chosen networks.  URLs are
read by one parser (:func:`parse_url`); an IP literal in any spelling a resolver accepts
(``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.0.0.1.``, ``[::ffff:7f00:1]``) is
normalised with :mod:`ipaddress` and checked at registration.  A host name is checked when
delivering: it is resolved, every address is checked, and the connection goes to a checked
address (so a name that resolves differently the next time cannot bypass the check).

Pure: no Twisted, no I/O (a host name is resolved by the agent, which calls
:func:`check_address` on every address it gets).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from firehose.webhooks.errors import WebhookError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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

