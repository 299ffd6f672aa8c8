"""What a delivery POSTs, by the hook's ``format``: the body and the headers that describe it.

- ``firehose`` (the default): ``{"hook", "sent_at", "events": [...], "gaps"?: [...]}`` as JSON;
- ``cloudevents``: a CloudEvents 1.0 batch in structured mode (``Content-Type:
  application/cloudevents-batch+json``), a JSON array of the events as
  :func:`firehose.cloudevents.structured` maps them;
- ``cloudevents-binary``: one event per POST in binary mode, its attributes as ``ce-*``
  headers and its ``data`` as the JSON body.

Gaps are no events, so in both CloudEvents formats they travel in an ``X-Firehose-Gaps``
header (the JSON list of gap messages), and a batch of gaps only is an empty structured batch,
``[]``.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from typing import Any

from firehose import cloudevents
from firehose.event import Event, dumps

FIREHOSE = "firehose"
CLOUDEVENTS = "cloudevents"
CLOUDEVENTS_BINARY = "cloudevents-binary"
#: Every body format, the default first.
FORMATS: tuple[str, ...] = (FIREHOSE, CLOUDEVENTS, CLOUDEVENTS_BINARY)
#: The media type of a structured-mode batch (the CloudEvents JSON batch format).
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
GAPS_HEADER = "X-Firehose-Gaps"


def batch_limit(fmt: str, batch_size: int) -> int:
    """Events one POST may hold: one in binary mode, ``batch_size`` otherwise."""
    return 1 if fmt == CLOUDEVENTS_BINARY else batch_size


def render(
    fmt: str, hook_id: str, sent_at: int, batch: list[Event], gaps: list[dict[str, Any]]
) -> tuple[bytes, dict[str, str]]:
    """The body of a POST of ``batch`` (and ``gaps``) in format ``fmt``, and its own headers
    (``Content-Type`` always; ``ce-*`` in binary mode; :data:`GAPS_HEADER` when there are
    gaps in a CloudEvents format)."""
    if fmt == FIREHOSE:
        body = (
            b'{"hook":' + dumps(hook_id)
            + b',"sent_at":' + dumps(sent_at)
            + b',"events":[' + b",".join(e.encoded for e in batch) + b"]"
            + (b',"gaps":' + dumps(gaps) if gaps else b"")
            + b"}"
        )
        return body, {"Content-Type": "application/json"}
    headers = {GAPS_HEADER: dumps(gaps).decode()} if gaps else {}
    if fmt == CLOUDEVENTS_BINARY and len(batch) == 1:
        headers.update(cloudevents.binary_headers(batch[0]))
        return cloudevents.data_bytes(batch[0]), headers
    headers["Content-Type"] = BATCH_CONTENT_TYPE
    return b"[" + b",".join(cloudevents.encode(e) for e in batch) + b"]", headers
