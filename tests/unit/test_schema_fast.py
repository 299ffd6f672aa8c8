"""The schema's fast check (``firehose.schema._fast_check``) changes nothing but the time taken:
whatever it accepts, fastjsonschema accepts; and :func:`validate_batch` answers every batch
exactly as the schema alone does (the same acceptance, the same error code and message).

The reference below is :func:`validate_batch` as it was before the fast check: fastjsonschema on
each event, then the whole batch for the message, then the limits.
"""

from __future__ import annotations

import copy
from typing import Any

import fastjsonschema
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firehose import schema
from firehose.event import EVENT_TYPES
from firehose.schema import SchemaError, validate_batch, validate_event
from tests.unit.helpers import make_event
from tests.unit.test_ingest_property import bad_values, deep, json_values, near_valid


def reference(batch: Any) -> list[dict[str, Any]]:
    """validate_batch without the fast check."""
    if isinstance(batch, list) and batch and len(batch) <= schema.MAX_BATCH_EVENTS:
        try:
            for event in batch:
                if event["type"] not in EVENT_TYPES:
                    raise KeyError(event["type"])
                schema._for_type(event["type"])(event)
        except (fastjsonschema.JsonSchemaValueException, KeyError, TypeError):
            schema._validate_whole(batch)
    else:
        schema._validate_whole(batch)
    last: dict[tuple[str, str], int] = {}
    for i, event in enumerate(batch):
        schema._check_limits(event, f"batch[{i}]")
        key = (event["master"], event["incarnation"])
        previous = last.get(key)
        if previous is not None and event["seq"] <= previous:
            raise SchemaError(f"batch[{i}].seq is {event['seq']}, not above {previous} before it: seqs must "
                              "increase strictly within a batch", "seq_order")
        last[key] = event["seq"]
    return batch


def outcome(validate: Any, batch: Any) -> tuple[str, str] | None:
    try:
        validate(copy.deepcopy(batch))
    except SchemaError as exc:
        return exc.code, str(exc)
    return None


types = st.sampled_from(EVENT_TYPES)

#: Every field any event type's data declares, with values of every JSON type.
data_fields = st.sampled_from(sorted(schema.FIELD_NAMES) + ["x", "pad"])
odd_values = st.one_of(
    bad_values, json_values, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.lists(st.text(max_size=3), max_size=3), st.lists(json_values, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["repository", "branch", "name", "url", "codebase"]),
                             st.one_of(st.none(), st.text(max_size=3), st.integers()), max_size=3), max_size=3),
)


@st.composite
def any_type_event(draw: st.DrawFn) -> dict[str, Any]:
    """An event of any type whose data holds the fields of its schema, some with odd values."""
    kind = draw(types)
    data: dict[str, Any] = {f: 1 for f in ("buildid", "number", "stepid", "buildrequestid", "buildsetid",
                                           "changeid", "logid")}
    data.update(builder="b", name="n", worker="w")
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        data[draw(data_fields)] = draw(odd_values)
    if draw(st.booleans()):
        data.pop(draw(data_fields), None)
    event = make_event(draw(st.integers(min_value=1, max_value=10)), type=kind)
    event["data"] = data
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        event[draw(st.sampled_from(["master", "incarnation", "seq", "type", "time", "data", "extra"]))] = (
            draw(odd_values))
    return event


settings_ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])


class FastCheckTests(SynchronousTestCase):
    @settings_
    @given(any_type_event())
    def test_what_the_fast_check_accepts_the_schema_accepts(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if not isinstance(kind, str) or kind not in EVENT_TYPES:
            return
        if schema._fast_for(kind)(event):
            schema._for_type(kind)(event)  # raises if the fast check was wrong

    @settings_
    @given(st.lists(any_type_event(), min_size=1, max_size=4))
    def test_validate_batch_answers_as_the_schema_alone(self, batch: list[dict[str, Any]]) -> None:
        self.assertEqual(outcome(validate_batch, batch), outcome(reference, batch))

    @settings_
    @given(near_valid())
    @example([make_event(1, properties={"p": deep(30)})])
    @example([make_event(5.0)])  # type: ignore[arg-type]
    @example([{**make_event(1), "master": "m1\n"}])  # fastjsonschema reads "$" as the very end
    @example([{**make_event(1), "seq": True}])
    @example([{**make_event(1), "time": True}])
    @example([{**make_event(1), "time": 2**53 + 1}])
    @example([{**make_event(1), "incarnation": ""}])
    @example([make_event(1, sourcestamps=[{"branch": 1}])])
    @example([make_event(1, tags=("a",))])  # a tuple is an array to the schema, not to JSON
    def test_near_valid_batches_are_answered_as_the_schema_alone(self, batch: list[dict[str, Any]]) -> None:
        self.assertEqual(outcome(validate_batch, batch), outcome(reference, batch))

    def test_every_event_type_has_a_fast_check(self) -> None:
        """The schema uses only what the fast check knows: no type falls back to fastjsonschema
        for every event (which would be correct, only slow)."""
        for kind in EVENT_TYPES:
            self.assertIsNot(schema._fast_for(kind), schema._never, kind)

    def test_a_schema_with_an_unknown_keyword_gets_no_fast_check(self) -> None:
        self.assertIsNone(schema._fast_check({"type": "object", "anyOf": [{"type": "object"}]}))
        self.assertIsNone(schema._fast_check({"type": "string", "format": "date"}))
        self.assertIsNone(schema._fast_check({"minimum": 1}))  # applies to numbers only

    def test_validate_event_still_words_errors_as_before(self) -> None:
        with self.assertRaises(SchemaError) as caught:
            validate_event({**make_event(1), "seq": "two"})
        self.assertIn("event.seq must be integer", str(caught.exception))
        self.assertIs(validate_event(e := make_event(3)), e)
