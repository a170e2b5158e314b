"""Sans-I/O HTTP: (method, request headers, file metadata) -> :class:`Response`.

Everything in this package is pure and synchronous: no sockets, no files, no clock. The
adapters carry a :class:`Response` out. One concern per module:

- :mod:`.model`       Response, ByteRange, Segment, HttpPolicy: the data of a decision
- :mod:`.dates`       HTTP-date parsing and formatting (RFC 9110 §5.6.7)
- :mod:`.validators`  entity tags and the conditions that compare them (§8.8, §13.1)
- :mod:`.ranges`      the Range header against a file's length (§14)
- :mod:`.read`        the GET/HEAD decision: PreparedFile, respond, evaluate_preconditions
- :mod:`.write`       PUT/DELETE decisions: refusals before the body, write preconditions
- :mod:`.replies`     every ready-made reply, and ``for_error``: each error type's reply
- :mod:`.accel`       the X-Accel-Redirect reply for nginx in front

This face re-exports the names the rest of servefiles uses.
"""

from ..content_types import is_active_content
from .model import ByteRange, FieldLines, Header, HttpPolicy, Response, Segment
from .ranges import parse_range
from .read import PreparedFile, evaluate_preconditions, respond
from .replies import (
    RETRY_AFTER_SECONDS,
    bearer_challenge,
    deleted,
    file_json,
    for_error,
    head_too_large,
    health,
    json_error,
    json_response,
    method_not_allowed,
    metrics,
    not_found,
    too_large,
    unavailable,
    written,
)
from .write import check_upload, content_length, unmodified_since, write_precondition

__all__ = [
    "RETRY_AFTER_SECONDS",
    "ByteRange",
    "FieldLines",
    "Header",
    "HttpPolicy",
    "PreparedFile",
    "Response",
    "Segment",
    "bearer_challenge",
    "check_upload",
    "content_length",
    "deleted",
    "evaluate_preconditions",
    "file_json",
    "for_error",
    "head_too_large",
    "health",
    "is_active_content",
    "json_error",
    "json_response",
    "method_not_allowed",
    "metrics",
    "not_found",
    "parse_range",
    "respond",
    "too_large",
    "unavailable",
    "unmodified_since",
    "write_precondition",
    "written",
]
