"""firehose: a live, durable, resumable event stream for Buildbot masters.

What users may rely on is exported here; everything else is internal.
"""

__version__ = "0.1.0"

from firehose.cursor import Cursor, CursorError, parse_cursor  # noqa: E402
from firehose.event import EVENT_TYPES, RESULT_NAMES, Event  # noqa: E402
from firehose.filters import Filter, FilterError, parse_json, parse_query  # noqa: E402

__all__ = [
    "__version__",
    "Cursor",
    "CursorError",
    "parse_cursor",
    "EVENT_TYPES",
    "RESULT_NAMES",
    "Event",
    "Filter",
    "FilterError",
    "parse_json",
    "parse_query",
]
