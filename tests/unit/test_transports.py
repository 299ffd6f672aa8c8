"""The three transports over in-memory connections: SSE and long-poll through StubTreq, the
WebSocket through autobahn's own client over Twisted's iosim (no sockets, no global reactor)."""

from __future__ import annotations

from typing import Any
from unittest import mock

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cloudevents.core.formats.json import JSONFormat
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from firehose import cloudevents
from firehose.event import dumps, loads
from firehose.hub import Hub
from firehose.ingest import MasterTokens
from firehose.journal import MemoryJournal
from firehose.transports.longpoll import PollResource
from firehose.transports.websocket import FirehoseWebSocketFactory
from firehose.web import build_site
from tests.unit.helpers import HeldReads, batch


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=10, max_pending=50)
        self.site = site = build_site(hub=self.hub, journal=self.journal, clock=self.clock, tokens=MasterTokens({}))
        self.client = StubTreq(site.resource)

    def append(self, first: int, last: int, **kw: Any) -> None:
        self.successResultOf(self.journal.append(batch(first, last, **kw)))

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LongPollTests(_Base):
    def get(self, query: str) -> Any:
        return self.client.get("http://firehose.test/poll?" + query)

    def json(self, d: Any) -> tuple[int, Any]:
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.json())

    def test_answers_at_once_when_events_follow_cursor(self) -> None:
        """Events after ``since`` come back at once, with the cursor to poll from next."""
        self.append(1, 3)
        code, body = self.json(self.get("since=e1:1"))
        self.assertEqual(code, 200)
        self.assertEqual([e["seq"] for e in body["events"]], [2, 3])
        self.assertEqual(body["cursor"], "e1:3")

    def test_waits_for_a_matching_event(self) -> None:
        """With nothing to return the request is held until a matching event arrives."""
        self.append(1, 1)
        d = self.get("since=e1:1&builder=mac")
        self.assertNoResult(d)
        self.append(2, 2, builder="linux")
        self.assertNoResult(d)
        self.append(3, 3, builder="mac")
        code, body = self.json(d)
        self.assertEqual([e["seq"] for e in body["events"]], [3])

    def test_timeout_returns_empty_with_cursor(self) -> None:
        """After ``timeout`` seconds the answer is empty, with a cursor past what was scanned,
        caught up (``more`` false) with the head it names."""
        self.append(1, 2)
        d = self.get("since=e1:2&timeout=5&builder=mac")
        self.append(3, 4, builder="linux")
        self.clock.advance(5)
        code, body = self.json(d)
        self.assertEqual((code, body), (200, {"events": [], "cursor": "e1:4", "more": False, "head": "e1:4"}))

    def test_limit_caps_the_answer_and_cursor_follows(self) -> None:
        """``limit`` caps the events per answer; the cursor names the last one returned."""
        self.append(1, 8)
        code, body = self.json(self.get("since=e1:0&limit=3"))
        self.assertEqual([e["seq"] for e in body["events"]], [1, 2, 3])
        self.assertEqual(body["cursor"], "e1:3")

    def test_client_going_away_cancels_wait(self) -> None:
        """A client that disconnects stops its subscription and timer."""
        d = self.get("timeout=30")
        self.assertEqual(self.hub.stats.subscribers["longpoll"], 1)
        d.cancel()
        self.client.flush()
        self.failureResultOf(d)
        self.assertEqual(self.hub.stats.subscribers["longpoll"], 0)

    def test_bad_arguments_are_400s(self) -> None:
        """Bad filter, cursor, timeout and limit each get a 400 naming the problem."""
        for query, error in [("nope=1", "bad_filter"), ("since=garbage", "bad_cursor"),
                             ("timeout=-1", "bad_request"), ("limit=abc", "bad_request"),
                             ("since=e1:1&since=e1:2", "bad_request")]:
            code, body = self.json(self.get(query))
            self.assertEqual((code, body["error"]), (400, error), query)

    def test_other_epoch_gets_gap(self) -> None:
        """A cursor from another journal answers at once with a gap and where to resume."""
        self.append(1, 2)
        code, body = self.json(self.get("since=zz:5"))
        self.assertEqual(body["gap"]["reason"], "epoch")
        self.assertEqual(body["cursor"], "e1:0")


class _Collector:
    """Receives a streamed body and can hang up, as a browser closing the page would."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.ended = reason


class SSETests(_Base):
    def open(self, query: str = "", headers: dict[str, list[str]] | None = None) -> Any:
        d = self.client.get("http://firehose.test/sse?" + query, headers=headers)
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"])
        self.collector = _Collector()
        response.deliverBody(self.collector)
        return response

    def messages(self) -> list[dict[str, str]]:
        self.client.flush()
        out = []
        for block in b"".join(self.collector.chunks).decode().split("\n\n"):
            lines = [line for line in block.splitlines() if line and not line.startswith((":", "retry"))]
            if lines:
                out.append(dict(line.split(": ", 1) for line in lines))
        return out

    def close(self) -> None:
        self.collector.transport.stopProducing()
        self.client.flush()
        self.assertEqual(self.hub.stats.subscribers["sse"], 0)

    def test_events_have_id_event_and_data(self) -> None:
        """Each event is an SSE message: ``id`` the cursor, ``event`` the type, ``data`` the JSON."""
        self.open()
        self.append(1, 2)
        msgs = self.messages()
        self.assertEqual([m["id"] for m in msgs], ["e1:1", "e1:2"])
        self.assertEqual(msgs[0]["event"], "build.started")
        self.assertEqual(loads(msgs[0]["data"])["id"], "e1:1")
        self.close()

    def test_resumes_from_last_event_id(self) -> None:
        """``Last-Event-ID`` (what EventSource sends on reconnect) resumes after that event."""
        self.append(1, 4)
        self.open(headers={"Last-Event-ID": ["e1:2"]})
        self.assertEqual([m["id"] for m in self.messages()], ["e1:3", "e1:4"])
        self.close()

    def test_heartbeat_comments(self) -> None:
        """A quiet stream gets a comment line every 15 s so proxies keep it open."""
        self.open()
        self.clock.advance(15)
        self.client.flush()
        self.assertIn(b": keepalive\n\n", b"".join(self.collector.chunks))
        self.close()

    def test_slow_reader_gets_gap_with_resume_id_and_stream_ends(self) -> None:
        """A reader whose socket stays full gets ``event: gap`` whose ``id`` is its resume
        cursor, then the stream ends so EventSource reconnects from there."""
        self.open()
        (sub,) = self.hub.subscriptions
        sub.pause()  # what the socket's producer does when its buffer is full
        self.append(1, 60)
        msgs = self.messages()
        self.assertEqual(msgs[-1]["event"], "gap")
        self.assertEqual(loads(msgs[-1]["data"])["reason"], "slow")
        self.assertEqual(msgs[-1]["id"], "e1:0")
        from twisted.web.client import ResponseDone

        self.assertTrue(self.collector.ended is not None and self.collector.ended.check(ResponseDone))
        self.assertEqual(self.hub.stats.subscribers["sse"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_filter_is_a_400_before_streaming(self) -> None:
        """A malformed filter is an HTTP 400 with a JSON error, not an empty stream."""
        d = self.client.get("http://firehose.test/sse?builder=")
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400)
        self.assertEqual(self.successResultOf(response.json())["error"], "bad_filter")

    def test_cors_header(self) -> None:
        """Pages on other origins may subscribe."""
        response = self.open()
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        self.close()


class _Client(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened = self
        self.factory.received = []
        self.factory.raw = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.received.append(loads(payload))
        self.factory.raw.append(payload)


class _WebSocketBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=10, max_pending=50)
        self.server_factory = FirehoseWebSocketFactory(self.hub, ping_interval=0)
        self.server_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.client_factory, self.server, self.server_transport, self.pump = self.connect()
        self.client = self.client_factory.opened

    def connect(self) -> Any:
        """One more client socket to the same server factory, over iosim."""
        client_factory = WebSocketClientFactory("ws://127.0.0.1/ws")
        client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        client_factory.protocol = _Client
        addr = IPv4Address("TCP", "127.0.0.1", 80)
        server = self.server_factory.buildProtocol(addr)
        client = client_factory.buildProtocol(addr)
        server_transport = iosim.FakeTransport(server, isServer=True)
        pump = iosim.connect(server, server_transport, client, iosim.FakeTransport(client, isServer=False))
        pump.flush()
        return client_factory, server, server_transport, pump

    def send(self, msg: Any) -> list[dict[str, Any]]:
        self.client.sendMessage(dumps(msg))
        return self.flush()

    def flush(self) -> list[dict[str, Any]]:
        self.pump.flush()
        received, self.client_factory.received = self.client_factory.received, []
        return received

    def append(self, first: int, last: int, **kw: Any) -> None:
        self.successResultOf(self.journal.append(batch(first, last, **kw)))

    def count_prepared(self) -> list[bytes]:
        """From now on, every payload the server's factory prepares as a frame, in order."""
        prepared: list[bytes] = []
        real_prepare = self.server_factory.prepareMessage

        def counting(payload: bytes, *a: Any, **kw: Any) -> Any:
            prepared.append(payload)
            return real_prepare(payload, *a, **kw)

        self.server_factory.prepareMessage = counting  # type: ignore[method-assign]
        return prepared



class WebSocketTests(_WebSocketBase):
    def test_subscribe_acknowledged_then_events(self) -> None:
        """``subscribe`` is acknowledged with the filter and head cursor, then events flow."""
        self.append(1, 2)
        acks = self.send({"cmd": "subscribe", "filter": {"builder": "linux"}})
        self.assertEqual(acks, [{"type": "subscribed", "filter": {"builder": ["linux"]}, "format": "firehose", "cursor": "e1:2"}])
        self.append(3, 4)
        self.assertEqual([m["id"] for m in self.flush()], ["e1:3", "e1:4"])

    def test_since_replays_then_live(self) -> None:
        """``since`` replays what followed the cursor before live events."""
        self.append(1, 3)
        msgs = self.send({"cmd": "subscribe", "since": "e1:1"})
        self.append(4, 4)
        msgs += self.flush()
        self.assertEqual([m.get("id") for m in msgs[1:]], ["e1:2", "e1:3", "e1:4"])

    def test_unsubscribe_and_ping(self) -> None:
        """``unsubscribe`` stops events; ``ping`` answers ``pong`` with the head cursor."""
        self.send({"cmd": "subscribe"})
        self.assertEqual(self.send({"cmd": "unsubscribe"}), [{"type": "unsubscribed"}])
        self.append(1, 1)
        self.assertEqual(self.flush(), [])
        self.assertEqual(self.send({"cmd": "ping"}), [{"type": "pong", "cursor": "e1:1"}])

    def test_errors_keep_the_connection(self) -> None:
        """Bad commands, filters and cursors are answered with an error and the socket stays up."""
        for msg, error in [({"cmd": "dance"}, "bad_command"), ([1], "bad_command"),
                           ({"cmd": "subscribe", "filter": {"nope": "x"}}, "bad_filter"),
                           ({"cmd": "subscribe", "since": "junk"}, "bad_cursor"),
                           ({"cmd": "subscribe", "since": 5}, "bad_cursor")]:
            (answer,) = self.send(msg)
            self.assertEqual((answer["type"], answer["error"]), ("error", error))
        self.client.sendMessage(b"{not json")
        self.assertEqual(self.flush()[0]["error"], "malformed_json")
        self.assertEqual(self.send({"cmd": "ping"})[0]["type"], "pong")

    def test_full_socket_queues_then_ends_slow_subscriber(self) -> None:
        """When the socket stops draining the subscription queues, then ends with a slow gap."""
        self.send({"cmd": "subscribe"})
        producer = self.server_transport.producer
        producer.pauseProducing()
        self.append(1, 60)
        # Nothing but the gap was written while the socket was full.
        (gap,) = self.flush()
        self.assertEqual((gap["type"], gap["reason"], gap["cursor"]), ("gap", "slow", "e1:0"))
        # The socket is still usable: once it drains, resubscribe from the gap's cursor.
        producer.resumeProducing()
        msgs = self.send({"cmd": "subscribe", "since": gap["cursor"]})
        self.assertEqual(len([m for m in msgs if "id" in m]), 60)

    def test_each_event_is_framed_once(self) -> None:
        """Two subscribers on two sockets get one event framed once: one prepared frame, kept in
        the factory's frame cache, written to both."""
        other_factory, _, _, other_pump = self.connect()
        prepared = self.count_prepared()
        self.send({"cmd": "subscribe"})
        other_factory.opened.sendMessage(dumps({"cmd": "subscribe"}))
        other_pump.flush()
        self.append(1, 1)
        other_pump.flush()
        self.assertEqual([m["id"] for m in self.flush()], ["e1:1"])
        self.assertEqual([m.get("id") for m in other_factory.received[1:]], ["e1:1"])
        self.assertEqual(prepared, [self.journal._events[0].encoded])

    def test_rejected_resubscribe_keeps_the_current_subscription(self) -> None:
        """A ``subscribe`` refused for a bad cursor leaves the working subscription in place."""
        self.send({"cmd": "subscribe"})
        (error,) = self.send({"cmd": "subscribe", "since": "e1:999"})
        self.assertEqual(error["error"], "bad_cursor")
        self.append(1, 1)
        self.assertEqual([m["id"] for m in self.flush()], ["e1:1"])


class _ClosingClient(_Client):
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed = (code, reason)


class WebSocketLimitTests(SynchronousTestCase):
    """What one WebSocket client may cost: commands it may send, answers it may make the server
    write, journal reads it may queue."""

    def setUp(self) -> None:
        from tests.unit.test_websocket_property import TCPLikeTransport

        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=5, max_pending=50)
        self.server_factory = FirehoseWebSocketFactory(
            self.hub, ping_interval=0, commands_per_second=1, command_burst=20, reactor=self.clock
        )
        self.server_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.client_factory = WebSocketClientFactory("ws://127.0.0.1/ws")
        self.client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.client_factory.protocol = _ClosingClient
        self.client_factory.closed = None
        addr = IPv4Address("TCP", "127.0.0.1", 80)
        server = self.server_factory.buildProtocol(addr)
        client = self.client_factory.buildProtocol(addr)
        self.server_io = TCPLikeTransport(server, isServer=True)
        self.pump = iosim.connect(server, self.server_io, client,
                                  iosim.FakeTransport(client, isServer=False), clock=self.clock)
        self.flush()
        self.client = self.client_factory.opened

    def flush(self) -> list[dict[str, Any]]:
        self.pump.flush()
        while self.server_io.delivered:  # bytes let through by a resume, read on this pump
            self.server_io.delivered = False
            self.pump.flush()
        received, self.client_factory.received = getattr(self.client_factory, "received", []), []
        return received

    def send(self, msg: Any) -> list[dict[str, Any]]:
        self.client.sendMessage(dumps(msg))
        return self.flush()

    def tearDown(self) -> None:
        if self.client_factory.closed is None:
            self.client.sendClose()
            self.flush()
        self.assertEqual(self.hub.stats.subscribers["websocket"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_commands_wait_while_the_socket_is_full(self) -> None:
        """While the socket's send buffer is full the client's commands are not read, so a
        client sending pings without reading its pongs cannot make the server buffer them; once
        the socket drains they are answered, in order."""
        self.send({"cmd": "subscribe"})
        producer = self.server_io.producer
        producer.pauseProducing()  # what TCP does when the send buffer passes its high mark
        for _ in range(10):
            self.client.sendMessage(dumps({"cmd": "ping"}))
        self.assertEqual(self.flush(), [])
        self.assertFalse(self.server_io.reading)
        producer.resumeProducing()
        self.assertEqual([m["type"] for m in self.flush()], ["pong"] * 10)

    def test_command_flood_is_closed_with_1008(self) -> None:
        """Past its burst of commands (20 here, then 1 per second) a client is closed with code
        1008 and a reason naming the limit, and its subscription ends; a client within the rate
        is never closed."""
        self.send({"cmd": "subscribe"})
        for _ in range(5):
            self.clock.advance(1)
            self.send({"cmd": "ping"})  # at the rate: tokens refill as fast as they are spent
        # 19 tokens left (the subscribe spent one; each ping at the rate was refilled).
        replies = [m["type"] for _ in range(19) for m in self.send({"cmd": "ping"})]
        self.assertEqual(replies, ["pong"] * 19)
        self.assertIsNone(self.client_factory.closed)
        self.assertEqual(self.send({"cmd": "ping"}), [])
        code, reason = self.client_factory.closed
        self.assertEqual(code, 1008)
        self.assertIn("too many commands", reason)
        self.assertEqual(self.hub.stats.subscribers["websocket"], 0)

    def test_ping_frames_count_as_commands(self) -> None:
        """WebSocket ping frames (answered by pong frames) spend the same budget as commands."""
        for _ in range(20):
            self.client.sendPing()
        self.flush()
        self.assertIsNone(self.client_factory.closed)
        self.client.sendPing()
        self.flush()
        self.assertEqual(self.client_factory.closed[0], 1008)

    def test_resubscribe_flood_holds_one_journal_read(self) -> None:
        """Subscribing again and again while a replay read is pending queues no further reads:
        at most one is in flight per socket.  When it ends, only the last subscription starts,
        and it delivers everything after its cursor, once, in order."""
        self.successResultOf(self.journal.append(batch(1, 12)))
        reads = HeldReads(self.journal)
        for i in range(10):
            (ack,) = self.send({"cmd": "subscribe", "since": f"e1:{i}", "filter": {"builder": "linux"}})
            self.assertEqual(ack["type"], "subscribed")
            self.assertEqual(len(reads.pending), 1)
        self.assertLessEqual(self.hub.stats.subscribers["websocket"], 2)
        events: list[dict[str, Any]] = []
        for _ in range(10):
            reads.release()
            self.assertLessEqual(len(reads.pending), 1)
            events += self.flush()
        self.assertEqual([e["id"] for e in events], [f"e1:{n}" for n in range(10, 13)])
        self.assertEqual(self.hub.stats.subscribers["websocket"], 1)

    def test_unknown_command_is_not_echoed_whole(self) -> None:
        """An error quotes at most a short piece of what the client sent: a 60 KiB ``cmd``
        does not come back."""
        (error,) = self.send({"cmd": "x" * 60_000})
        self.assertEqual(error["error"], "bad_command")
        self.assertLess(len(error["message"]), 200)


class LongPollReplayTests(_Base):
    def test_timeout_never_answers_before_the_replay_has_read(self) -> None:
        """With ``timeout=0`` and a slow journal read, the answer waits for the read and holds
        the events that were there: 'no events' only ever means none."""
        self.append(1, 3)
        reads = HeldReads(self.journal)
        d = self.client.get("http://firehose.test/poll?since=e1:0&timeout=0")
        self.clock.advance(0)
        self.client.flush()
        self.assertNoResult(d)
        reads.release()
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.json())
        self.assertEqual([e["seq"] for e in body["events"]], [1, 2, 3])

    def test_scan_budget_answers_with_progress_and_more(self) -> None:
        """A poll whose filter matches nothing in a long journal answers once it has examined
        ``max_scan`` events (whole pages), with a cursor past them and ``more``: the next poll
        goes on from there instead of holding the request (and the reader) until the whole
        journal is scanned.  Its timeout passing meanwhile does not cut the pages short."""
        client = StubTreq(PollResource(self.hub, self.clock, max_scan=20))
        self.append(1, 35)  # pages of 10
        reads = HeldReads(self.journal)
        d = client.get("http://firehose.test/?since=e1:0&timeout=1&builder=nomatch")
        self.clock.advance(1)
        client.flush()
        self.assertNoResult(d)
        self.assertTrue(reads.release())
        client.flush()
        self.assertNoResult(d)  # one page read: not the budget yet, and the timeout waits for it
        self.assertTrue(reads.release())
        client.flush()
        body = self.successResultOf(self.successResultOf(d).json())
        self.assertEqual(body, {"events": [], "cursor": "e1:20", "more": True, "head": "e1:35"})
        self.assertEqual(self.hub.stats.subscribers["longpoll"], 0)



def _cloudevent(raw: str | bytes) -> Any:
    """A CloudEvent parsed and validated by the CloudEvents SDK (raises if it is not one)."""
    return JSONFormat().read(None, raw)


class SSECloudEventsTests(_Base):
    """``/sse?format=cloudevents``: the same stream, each ``data:`` a structured CloudEvent."""

    open = SSETests.open
    messages = SSETests.messages
    close = SSETests.close

    def test_events_are_cloudevents_with_id_and_event_lines_kept(self) -> None:
        """Each message's data parses as a CloudEvent whose id is the SSE ``id:`` (the cursor);
        ``event:`` is still the firehose type, so the same EventSource listeners work."""
        self.open("format=cloudevents")
        self.append(1, 2, type="step.started")
        msgs = self.messages()
        self.assertEqual([m["id"] for m in msgs], ["e1:1", "e1:2"])
        self.assertEqual([m["event"] for m in msgs], ["step.started"] * 2)
        ces = [_cloudevent(m["data"]) for m in msgs]
        self.assertEqual([c.get_id() for c in ces], ["e1:1", "e1:2"])
        self.assertEqual([c.get_type() for c in ces], ["org.buildbot.firehose.step.started.v1"] * 2)
        self.assertEqual([c.get_subject() for c in ces], ["builds/1/steps/1", "builds/2/steps/2"])
        self.assertEqual([c.get_extension("sequence") for c in ces], [f"{n:020d}" for n in (1, 2)])
        self.assertEqual(ces[0].get_data(), self.journal._events[0].obj["data"])
        self.close()

    def test_resume_with_a_cloudevents_id(self) -> None:
        """A CloudEvent's id, sent back as ``Last-Event-ID``, resumes right after that event."""
        self.append(1, 4)
        self.open("format=cloudevents", headers={"Last-Event-ID": ["e1:2"]})
        self.assertEqual([_cloudevent(m["data"]).get_id() for m in self.messages()], ["e1:3", "e1:4"])
        self.close()

    def test_firehose_format_is_todays_bytes(self) -> None:
        """``format=firehose`` streams exactly what no ``format`` does: the envelope, unchanged."""
        self.append(1, 2)
        self.open("since=e1:0&format=firehose")
        explicit = self.messages()
        self.close()
        self.open("since=e1:0")
        self.assertEqual(self.messages(), explicit)
        self.assertEqual([loads(m["data"]) for m in explicit], [e.obj for e in self.journal._events])
        self.close()

    def test_each_event_is_encoded_once_per_format(self) -> None:
        """Two CloudEvents streams and a firehose one: each event becomes a CloudEvent once,
        whatever the number of streams asking for it, and the firehose stream is unaffected."""
        with mock.patch.object(cloudevents, "encode", wraps=cloudevents.encode) as encode:
            streams = []
            for query in ("format=cloudevents", "format=cloudevents", ""):
                self.open(query)
                streams.append(self.collector)
            self.append(1, 3)
            got = []
            for self.collector in streams:
                got.append([loads(m["data"]) for m in self.messages()])
            self.assertEqual(encode.call_count, 3)
        self.assertEqual(got[0], got[1])
        self.assertEqual([c["id"] for c in got[0]], ["e1:1", "e1:2", "e1:3"])
        self.assertEqual(got[2], [e.obj for e in self.journal._events])
        for self.collector in streams:
            self.collector.transport.stopProducing()
        self.client.flush()
        self.assertEqual(self.hub.stats.subscribers["sse"], 0)

    def test_a_gap_keeps_its_own_shape(self) -> None:
        """Gaps are not events: a CloudEvents stream gets the same ``event: gap`` as any."""
        self.open("format=cloudevents")
        (sub,) = self.hub.subscriptions
        sub.pause()
        self.append(1, 60)
        gap = self.messages()[-1]
        self.assertEqual((gap["event"], gap["id"]), ("gap", "e1:0"))
        self.assertEqual(loads(gap["data"])["type"], "gap")

    def test_unknown_format_is_a_400_naming_the_allowed_values(self) -> None:
        """``format=xml`` is refused before any stream starts, with the values that work."""
        d = self.client.get("http://firehose.test/sse?format=xml")
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.json())
        self.assertEqual((response.code, body["error"]), (400, "bad_request"))
        self.assertIn("firehose, cloudevents", body["message"])
        self.assertEqual(self.hub.stats.subscribers["sse"], 0)


class WebSocketCloudEventsTests(_WebSocketBase):
    """``{"cmd": "subscribe", "format": "cloudevents"}`` on ``/ws``."""

    def test_events_are_cloudevents_and_the_ack_names_the_format(self) -> None:
        """The ack says ``format: cloudevents``; every event then parses as a CloudEvent whose
        id is the cursor; a resubscribe without ``format`` goes back to the envelope."""
        (ack,) = self.send({"cmd": "subscribe", "format": "cloudevents", "filter": {"builder": "linux"}})
        self.assertEqual((ack["type"], ack["format"]), ("subscribed", "cloudevents"))
        self.client_factory.raw = []
        self.append(1, 2)
        self.flush()
        raw = self.client_factory.raw
        ces = [_cloudevent(r) for r in raw]
        self.assertEqual([c.get_id() for c in ces], ["e1:1", "e1:2"])
        self.assertEqual({c.get_source() for c in ces}, {"urn:firehose:master:m1"})
        (ack,) = self.send({"cmd": "subscribe"})
        self.assertEqual(ack["format"], "firehose")
        self.append(3, 3)
        self.assertEqual(self.flush(), [self.journal._events[2].obj])

    def test_resume_from_a_cloudevents_id(self) -> None:
        """``since`` set to a CloudEvent's id replays what followed it, as CloudEvents."""
        self.append(1, 3)
        self.send({"cmd": "subscribe", "format": "cloudevents", "since": "e1:1"})
        self.assertEqual([_cloudevent(r).get_id() for r in self.client_factory.raw[1:]], ["e1:2", "e1:3"])

    def test_bad_format_is_an_error_and_the_socket_stays(self) -> None:
        """An unknown or non-string ``format`` is an error naming the allowed values; the current
        subscription goes on."""
        self.send({"cmd": "subscribe"})
        for bad in ("xml", 5, ["cloudevents"]):
            (error,) = self.send({"cmd": "subscribe", "format": bad})
            self.assertEqual((error["type"], error["error"]), ("error", "bad_command"))
            self.assertIn("format", error["message"])
        self.assertIn("firehose, cloudevents", self.send({"cmd": "subscribe", "format": "xml"})[0]["message"])
        self.append(1, 1)
        self.assertEqual([m["id"] for m in self.flush()], ["e1:1"])

    def test_each_event_is_framed_once_per_format(self) -> None:
        """Two CloudEvents sockets and one firehose socket: one event is prepared twice in all,
        once per format, and each socket gets its format's frame."""
        sockets = [self.connect() for _ in range(2)]
        prepared = self.count_prepared()
        self.send({"cmd": "subscribe"})
        for factory, _, _, pump in sockets:
            factory.opened.sendMessage(dumps({"cmd": "subscribe", "format": "cloudevents"}))
            pump.flush()
        prepared.clear()  # the acks
        self.append(1, 1)
        for _, _, _, pump in sockets:
            pump.flush()
        event = self.journal._events[0]
        self.assertEqual(self.flush(), [event.obj])
        self.assertEqual(sorted(prepared), sorted([event.encoded, cloudevents.encode(event)]))
        for factory, _, _, _ in sockets:
            self.assertEqual(_cloudevent(factory.raw[-1]).get_id(), "e1:1")

    def test_a_gap_keeps_its_own_shape(self) -> None:
        """A slow CloudEvents subscriber gets the ordinary gap message, not a CloudEvent."""
        self.send({"cmd": "subscribe", "format": "cloudevents"})
        self.server_transport.producer.pauseProducing()
        self.append(1, 60)
        (gap,) = self.flush()
        self.assertEqual((gap["type"], gap["reason"]), ("gap", "slow"))


class LongPollCloudEventsTests(_Base):
    """``/poll?format=cloudevents``: the answer's shape stays, its events are CloudEvents."""

    get = LongPollTests.get
    json = LongPollTests.json

    def test_events_are_cloudevents_and_paging_is_unchanged(self) -> None:
        """Each of ``events`` parses as a CloudEvent (id = cursor); ``cursor`` and the rest of
        the answer are what the firehose format gives, and the next poll resumes from a
        CloudEvent's id."""
        self.append(1, 5, type="request.submitted", buildrequestid=9)
        _, plain = self.json(self.get("since=e1:0&limit=3"))
        code, body = self.json(self.get("since=e1:0&limit=3&format=cloudevents"))
        self.assertEqual(code, 200)
        ces = [_cloudevent(dumps(e)) for e in body["events"]]
        self.assertEqual([c.get_id() for c in ces], ["e1:1", "e1:2", "e1:3"])
        self.assertEqual({c.get_subject() for c in ces}, {"buildrequests/9"})
        self.assertEqual({c.get_type() for c in ces}, {"org.buildbot.firehose.request.submitted.v1"})
        self.assertEqual({k: v for k, v in body.items() if k != "events"},
                         {k: v for k, v in plain.items() if k != "events"})
        _, rest = self.json(self.get(f"since={ces[-1].get_id()}&format=cloudevents"))
        self.assertEqual([_cloudevent(dumps(e)).get_extension("sequence") for e in rest["events"]],
                         ["00000000000000000004", "00000000000000000005"])

    def test_firehose_format_is_todays_answer(self) -> None:
        """``format=firehose`` answers exactly what no ``format`` does."""
        self.append(1, 3)
        self.assertEqual(self.json(self.get("since=e1:0&format=firehose")), self.json(self.get("since=e1:0")))
        self.assertEqual(self.json(self.get("since=e1:0"))[1]["events"], [e.obj for e in self.journal._events])

    def test_each_event_is_encoded_once_for_every_poll(self) -> None:
        """Three polls over the same events encode each as a CloudEvent once, not once per poll."""
        self.append(1, 4)
        cache = self.site.resource.getStaticEntity(b"poll").cloudevents
        with mock.patch.object(cache, "_make", wraps=cache._make) as encode:
            answers = [self.json(self.get("since=e1:0&format=cloudevents"))[1] for _ in range(3)]
        self.assertEqual(encode.call_count, 4)
        self.assertEqual(answers[0], answers[2])

    def test_a_gap_keeps_its_own_shape(self) -> None:
        """A gap answer is the same whatever the format: gaps are not events."""
        self.append(1, 2)
        self.assertEqual(self.json(self.get("since=zz:5&format=cloudevents")), self.json(self.get("since=zz:5")))

    def test_unknown_format_is_a_400_naming_the_allowed_values(self) -> None:
        """``format=cdevents`` (not offered) is a 400 ``bad_request`` listing what is."""
        code, body = self.json(self.get("format=cdevents"))
        self.assertEqual((code, body["error"]), (400, "bad_request"))
        self.assertIn("firehose, cloudevents", body["message"])
        self.assertEqual(self.hub.stats.subscribers["longpoll"], 0)
