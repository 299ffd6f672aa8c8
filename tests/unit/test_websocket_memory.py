"""What an idle WebSocket keeps: an open socket sheds what autobahn kept of its handshake and
its copies of handshake-only options, so its instance dictionary fits the smaller table, and
it keeps working (events, commands, limits) with what stays."""

from __future__ import annotations

import sys
from typing import Any

from firehose.transports import websocket
from tests.unit.test_transports import _WebSocketBase


class IdleSocketTests(_WebSocketBase):
    def test_open_socket_drops_its_handshake(self) -> None:
        """The handshake's headers, bytes and answer are gone; what was dropped reads None."""
        attrs = vars(self.server)
        for name in websocket._HANDSHAKE_ATTRS:
            self.assertNotIn(name, attrs)
            self.assertIsNone(getattr(self.server, name))

    def test_handshake_options_read_the_factory(self) -> None:
        """Options only the handshake reads are not copied per socket; reading one gives the
        factory's value, and setting one (as autobahn does at connection) is the socket's own."""
        factory = self.server_factory
        for name in websocket._HANDSHAKE_OPTIONS:
            self.assertNotIn(name, vars(self.server))
            self.assertIs(getattr(self.server, name), getattr(factory, name))
        self.server.maxConnections = 7
        self.assertEqual((self.server.maxConnections, factory.maxConnections), (7, 0))

    def test_instance_dictionary_fits_the_smaller_table(self) -> None:
        """At most 85 attributes (past that CPython doubles a dictionary's table, ~3.3 KB
        instead of ~1.6 KB), in a dictionary sized for them."""
        attrs = vars(self.server)
        self.assertLessEqual(len(attrs), 85)
        fresh: dict[str, Any] = {}
        for key, value in attrs.items():
            fresh[key] = value
        self.assertLessEqual(sys.getsizeof(attrs), sys.getsizeof(fresh))

    def test_send_queue_is_an_empty_fifo_list(self) -> None:
        """autobahn's queue of chopped and synchronous writes is a list with ``popleft``: empty
        (no 64-slot deque block) until autobahn queues, first in first out when it does."""
        queue = self.server.send_queue
        self.assertIsInstance(queue, websocket._SendQueue)
        self.assertEqual(len(queue), 0)
        queue.append((b"a", True))
        queue.append((b"b", False))
        self.assertEqual([queue.popleft(), queue.popleft()], [(b"a", True), (b"b", False)])
        self.assertFalse(queue)

    def test_a_shed_socket_still_works(self) -> None:
        """After the shedding: subscribe, events, ping, a bad command, a second subscribe."""
        self.append(1, 2)
        (ack,) = self.send({"cmd": "subscribe", "since": "e1:0"})[:1]
        self.assertEqual(ack["type"], "subscribed")
        self.append(3, 3)
        self.flush()
        self.assertEqual(self.send({"cmd": "ping"}), [{"type": "pong", "cursor": "e1:3"}])
        self.assertEqual(self.send({"cmd": "dance"})[0]["error"], "bad_command")
        self.send({"cmd": "subscribe", "filter": {"builder": "mac"}})
        self.append(4, 4, builder="mac")
        self.assertEqual([m["id"] for m in self.flush()], ["e1:4"])
