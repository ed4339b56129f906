"""Type stub for ``nexus._core``, the Rust extension built from ``nexus_core/`` (PyO3 + maturin).

The native module does one job per call across the boundary: the proxy hands it each network
chunk as it arrives and reads a compact summary at the end, so the hot path costs one call per
chunk and no per-event Python objects. The pure-Python twin used by the tests is
``tests.oracles.sse.ReferenceSseObserver``.
"""

from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, Final, final

# The module's own list (PyO3 writes it from the names it adds): tests/test_core_stub.py keeps both equal.
__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "LINK_CHILD_HISTORIES",
    "LINK_PER_KEY",
    "MAX_JSON_DEPTH",
    "REPAIR_NAMES",
    "STORED_REQUEST_HEADERS",
    "IndexEntry",
    "KnownKeys",
    "LinkEntries",
    "NexusCoreError",
    "Reply",
    "RequestAnalysis",
    "SplitBody",
    "SseObserver",
    "__version__",
    "analyze_request",
    "blob_columns",
    "build_request_batch",
    "copy_payload",
    "copy_row_field",
    "copy_row_last_resort",
    "copy_rows",
    "encode_copy_binary",
    "envelope_session",
    "join_body",
    "json_as_text",
    "merge_payloads",
    "normalize_text",
    "prompt_key",
    "read_reply",
    "request_columns",
    "safe_json",
    "safe_text",
    "session_in_user_id",
    "split_body",
]

__version__: Final[str]
"""Version of the Rust crate, which is also the Python package version (maturin dynamic version)."""

DEFAULT_MAX_LINE_BYTES: Final[int]
"""Default cap (16 MiB) for one SSE line and for one event's joined data."""

class NexusCoreError(ValueError):
    """Every error raised by ``nexus._core`` (converted from the Rust error enum in one place)."""

@final
class SseObserver:
    """Incremental observer of an Anthropic Messages SSE stream.

    It never copies or changes the stream for output: the proxy forwards the original bytes
    itself, and this object only extracts facts (ids, usage, stop reason, tool calls, errors) and
    can rebuild the final message. Chunks may be split at any byte, including inside a UTF-8
    character or between ``\\r`` and ``\\n``; the result never depends on where. Memory is
    bounded: at most one incomplete line is buffered, and a line or event longer than
    ``max_line_bytes`` is dropped with its event and sets ``overflowed``. Malformed event data
    is counted, never raised.

    Hostile event data is kept, visibly repaired, rather than dropped: data the JSON parser
    refuses (a lone surrogate escape, invalid UTF-8, a raw control byte in a string, a number with
    no float value such as ``1e999999``, nesting past 127 levels) is rewritten as ``safe_json``
    does and parsed again, so its text delta, usage or message is kept; ``repairs`` names what was
    done. Valid data is parsed once, as is: only refused data pays for the repair.
    """

    def __new__(cls, *, max_line_bytes: int = ...) -> SseObserver:
        """Create an observer. Raises ``NexusCoreError`` if ``max_line_bytes`` is below 1."""

    def feed(self, chunk: bytes | bytearray | memoryview, /) -> int:
        """Observe one network chunk; return how many SSE events it completed.

        ``bytes`` is read in place; other buffers (unsigned-byte format) are copied once. Never
        raises on content; raises ``TypeError`` only for an object that is not a byte buffer.
        """

    @property
    def max_line_bytes(self) -> int:
        """The line and event-data cap this observer was built with."""
    @property
    def message_id(self) -> str | None:
        """``message_start.message.id``."""
    @property
    def model(self) -> str | None:
        """``message_start.message.model`` (the model that actually answered)."""
    @property
    def role(self) -> str | None:
        """``message_start.message.role``."""
    @property
    def stop_reason(self) -> str | None:
        """Last ``message_delta.delta.stop_reason``; None until one arrives (e.g. cut-off stream)."""
    @property
    def stop_sequence(self) -> str | None:
        """Last ``message_delta.delta.stop_sequence``."""
    @property
    def input_tokens(self) -> int:
        """Uncached input tokens; 0 if never reported. Cumulative counts: the last report wins."""
    @property
    def output_tokens(self) -> int:
        """Output tokens from the last ``message_delta.usage`` (cumulative, never summed)."""
    @property
    def cache_creation_input_tokens(self) -> int:
        """Input tokens written to the prompt cache (billed apart from ``input_tokens``)."""
    @property
    def cache_read_input_tokens(self) -> int:
        """Input tokens read from the prompt cache (billed apart from ``input_tokens``)."""
    @property
    def event_count(self) -> int:
        """SSE events dispatched so far (those with a ``data:`` line), malformed ones included."""
    @property
    def malformed_events(self) -> int:
        """Dispatched events whose data was not a JSON object; they are skipped, never raised."""
    @property
    def content_blocks(self) -> int:
        """Number of ``content_block_start`` events seen."""
    @property
    def saw_message_stop(self) -> bool:
        """True once ``message_stop`` arrived: False means the stream was cut or ended in error."""
    @property
    def tool_uses(self) -> list[tuple[str, str]]:
        """``(id, name)`` of each ``tool_use``/``server_tool_use``/``mcp_tool_use`` block, in order."""
    @property
    def error(self) -> tuple[str, str] | None:
        """``(error.type, error.message)`` of the last ``error`` event; it can follow a 200."""
    @property
    def overflowed(self) -> bool:
        """True if a line or an event's data exceeded ``max_line_bytes`` and was dropped."""
    @property
    def repairs(self) -> list[str]:
        """Names (from ``REPAIR_NAMES``, in that order) of what was repaired to keep hostile data;
        empty for a valid stream. Event data the parser refused gets the names ``safe_json`` gives
        it (``surrogate_escaped``, ``invalid_utf8``, ``control_escaped``, ``number_as_text``,
        ``depth_limited``, ...); data that even then is not a JSON object is dropped, counted in
        ``malformed_events`` and named ``not_json``. Tool inputs (the joined ``partial_json``) are
        parsed the same way, so a cut-off input kept as the string of its text is ``not_json``.
        ``int_clamped``: a token count past 64 bits (or a float past it, like ``1e300``) saturated
        at 2**64 - 1. A usage number serde reads only as a float is kept exactly: an integer past
        64 bits is written in ``usage_json``/``message_json`` as the string of its digits
        (``number_as_text``), while its count saturates. A count given as a string, a fraction or a
        negative number is not counted (the count keeps its previous value) but stays in the usage.
        """
    def usage_json(self) -> bytes | None:
        """Merged usage as compact JSON: ``message_start`` usage shallow-merged with every
        ``message_delta`` usage (keeps ``cache_creation``, ``service_tier``, ``server_tool_use``
        and unknown keys); None if no usage was seen."""
    def message_json(self) -> bytes | None:
        """The final message rebuilt from the stream as compact JSON (content blocks assembled,
        tool inputs parsed, stop reason and usage applied); None before ``message_start``."""
    def reply(self) -> Reply:
        """The reply's facts at the end of the stream: the same ``Reply`` as ``read_reply`` gives a
        JSON body, from what the observer holds (ids and stop reason, ``usage_json()``, the four
        counts, ``len(tool_uses)``), with the launches and text of the rebuilt message, which is
        never written out and parsed again."""

@final
class Reply:
    """What one upstream reply says, read once in Rust for every consumer: storage (usage, counts,
    tool calls), the token counters, tracing (id, model, stop reason) and conversation linking
    (sub-agent launches, the text a continuation quotes). From ``read_reply`` (a JSON body) or
    ``SseObserver.reply`` (a stream). The Python code it replaced is ``tests.oracles.reply``."""

    @property
    def message_id(self) -> str | None:
        """``id``, when it is a string."""
    @property
    def model(self) -> str | None:
        """``model`` (the model that answered), when it is a string."""
    @property
    def stop_reason(self) -> str | None:
        """``stop_reason``, when it is a string."""
    @property
    def usage_json(self) -> bytes | None:
        """The ``usage`` object as storage keeps it (``orjson.dumps`` of it: compact, key order
        kept); None when the reply has no ``usage`` object. A stream's is ``usage_json()``."""
    @property
    def input_tokens(self) -> int | None:
        """The count its bigint column stores (``nexus.usage.counts.stored_count``): a whole number
        >= 0, exact even past 64 bits (the encoder clamps it, flagged ``int_clamped``); None when
        absent, null or not such a number (then ``usage_not_integer``)."""
    @property
    def output_tokens(self) -> int | None:
        """As ``input_tokens``."""
    @property
    def cache_creation_input_tokens(self) -> int | None:
        """As ``input_tokens``."""
    @property
    def cache_read_input_tokens(self) -> int | None:
        """As ``input_tokens``."""
    @property
    def usage_not_integer(self) -> bool:
        """A count was present, not null, and not a whole number >= 0 (the row's repair flag)."""
    @property
    def tool_call_count(self) -> int | None:
        """Content blocks whose ``type`` ends with ``tool_use``; None when the reply has no usage
        (as storage always counted them). A stream's counts its ``tool_uses``."""
    @property
    def launches(self) -> list[tuple[str, bytes]]:
        """``(tool_use id, prompt_key(input.prompt))`` of each ``tool_use`` block named ``Agent`` or
        ``Task`` with a string prompt, in order (the id as Python's ``str(id or "")``)."""
    @property
    def text(self) -> str:
        """The string ``text`` of every content block joined by a newline, whitespace runs as one
        space, trimmed, lower-cased (what a compaction's summary probe is looked for in)."""

def read_reply(body: bytes, /) -> Reply:
    """Read a JSON reply body once (GIL released). Never raises on content: what cannot be read is
    absent. Parsed as storage always read it: as is, else as ``safe_json`` repairs it (a lone
    surrogate, a number past a double, nesting past orjson's 1,024 levels)."""

MAX_JSON_DEPTH: Final[int]
"""The deepest container nesting ``safe_json`` keeps as JSON (128; the root container is depth 1).
Deeper subtrees are stored as a string of their text: orjson refuses to dump past 254 levels."""

REPAIR_NAMES: Final[tuple[str, ...]]
"""Every repair name, in the fixed order in which lists of repairs are given. They are stored in
the database (the ``repairs`` column), so they never change: ``nul_escaped``,
``surrogate_escaped``, ``invalid_utf8``, ``control_escaped``, ``number_as_text``,
``depth_limited``, ``not_json``, ``int_clamped``, ``stored_as_text``."""

@final
class KnownKeys:
    """A bounded set of content keys known to be in the database, oldest forgotten first (the
    writer's recent keys). Kept in Rust so ``build_request_batch`` checks a batch's parts against it
    with the GIL released; any other container is checked with the GIL held."""

    def __new__(cls, capacity: int, /) -> KnownKeys: ...
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    def clear(self) -> None:
        """Forget every key."""
    def add_all(self, keys: Iterable[bytes], /) -> None:
        """Remember ``keys`` as stored (the newest), forgetting the oldest past the capacity."""
    def unsent(self, payload: bytes, /) -> tuple[bytes, list[bytes]]:
        """The ``content_blobs`` rows of a COPY payload still to send (none whose key this set holds,
        each key once) and their keys; the payload itself when every row stays. Raises
        ``NexusCoreError`` for a malformed payload."""

STORED_REQUEST_HEADERS: Final[frozenset[str]]
"""Request headers kept with a stored request: an allow-list, so no credential can ever be stored."""

def request_columns() -> list[tuple[str, str]]:
    """The ``api_requests`` columns written now, as (name, type) in their COPY order.

    The one declaration of the layout (``nexus_core/src/rows.rs``: each column's name, its type for the
    encoder and how its cell is read from a record): the COPY column list, the encoder's types and the
    rows ``build_request_batch`` builds all come from it."""

def blob_columns() -> list[tuple[str, str]]:
    """The ``content_blobs`` columns, as (name, type) in their COPY order."""

def build_request_batch(
    records: Sequence[object],
    known: Container[bytes],
    /,
    *,
    reply: Callable[[Any], tuple[object, ...] | None],
    redact: Callable[[str], str],
    headers: Callable[[Any], tuple[bytes, str | None, str | None]],
    json: Callable[[Any], bytes],
    minimal: Callable[[Any, BaseException], Sequence[object]],
    conversations: Sequence[str | None] | None = None,
    pending: KnownKeys | None = None,
) -> tuple[bytes, bytes, list[bytes], list[tuple[int, str]]]:
    """Build and encode the ``api_requests`` rows of a batch of exchange records in one call.

    Returns the requests' COPY payload, the payload of their content parts not in ``known`` (each
    once; ``b""`` when there are none), those parts' keys, and the records left out as (index, why).
    Each record's attributes are read once with the GIL held, its bodies borrowed, not copied; then
    the GIL is released while every row and part is encoded (the heavy part), so other Python
    threads (the proxy's event loop) run meanwhile. The Python steps are called back, each behind one
    function (``nexus.storage.records``): ``reply`` (usage and tool calls of a non-streamed reply
    the record does not carry already read), ``redact`` (a value that may hold a client key),
    ``headers`` and ``json`` (header lists that are not plain str pairs, or a kept value to redact)
    and ``minimal`` (the row, in column order, of a record whose row could not be built: a Python
    exception while reading it). A record is left
    out only for a value no column can take (a bug), so one bad record never stops the batch.
    ``conversations``: per record, a conversation id stored when its link has none. ``pending``:
    parts another batch still in memory carries, left out like those in ``known`` (the writer's
    batches encoded early, `nexus.storage.writer`)."""

def encode_copy_binary(types: Sequence[str], rows: Iterable[Sequence[object]], /) -> bytes:
    """Encode a whole batch into one PostgreSQL ``COPY ... FROM STDIN (FORMAT binary)`` payload.

    One call per batch, so the writer crosses into Rust once per flush, not once per row or cell.
    ``types`` are PostgreSQL type names: ``jsonb`` (value: encoded JSON bytes, or str), ``json``,
    ``text`` (str, or bytes), ``uuid`` (str or 16 bytes), ``timestamptz`` (int microseconds since the
    Unix epoch), ``int2``, ``int4``, ``int8``, ``float8``, ``bool``, ``bytea`` and the arrays
    ``text[]``, ``bytea[]``, ``uuid[]``, ``int8[]`` (lists, elements may be None). None is NULL
    anywhere.

    Safe by construction, because one bad record must not stop all storage: content never fails.
    jsonb/json cells go through ``safe_json``, text cells (and ``text[]`` elements) through
    ``safe_text`` (a str with lone surrogates is read as ``surrogatepass`` bytes, so they become
    visible ``\\udXXX``), and ints outside an int2/int4/int8 column's range, even past 64 bits,
    are clamped to it. Two pseudo columns report what happened:

    - ``repairs`` (a PostgreSQL ``text[]``; must be the last column, as it covers every cell before
      it): Python passes None or a list of str (names it already knows); the encoder writes those
      followed by the names of the row's repairs (see ``REPAIR_NAMES``), each once, or NULL when
      there are none.
    - ``raw`` (a PostgreSQL ``bytea``; must follow a jsonb, json or text column): Python passes
      None, and the encoder writes the original bytes of the cell before it when that cell was
      repaired, else NULL; or Python passes ``bytes``, written as they are whatever the cell
      before became (this way the writer keeps the exact bytes of a request body that is not
      JSON, stored as ``{"unparsed_body": ...}`` in the cell before). Any other value raises.

    Only programming errors raise ``NexusCoreError``, naming the row, column and type: a Python
    value of the wrong type for its column, a row of the wrong length, a misplaced pseudo column,
    an invalid uuid, an int past 64 bits for a column that is not an integer.
    """

def safe_json(data: bytes, /) -> tuple[bytes, list[str]]:
    """``data`` made storable as PostgreSQL jsonb/json, and the names of the repairs made.

    What the encoder does to every jsonb/json cell, exposed for tests and the Python reference. The
    output is one JSON value that PostgreSQL accepts and Python's ``json.loads``, ``orjson.loads``
    and ``orjson.dumps`` of the result read back. JSON that needs nothing comes back as the same
    bytes with no repairs (one validation pass). Otherwise only the offending parts change, and
    visibly rather than silently: a ``\\u0000`` escape or raw NUL becomes the text ``\\u0000``
    (``nul_escaped``), a lone surrogate escape the text ``\\udXXX`` (``surrogate_escaped``), an
    invalid UTF-8 byte the text ``\\xNN`` (``invalid_utf8``), a raw control byte its ``\\u00XX``
    escape (``control_escaped``), a number too large, too small or too long for a reader a string
    of its exact text (``number_as_text``), a container deeper than ``MAX_JSON_DEPTH`` a string of
    its subtree's text (``depth_limited``), and input that is not JSON one string of all of it
    (``not_json``). The GIL is released while it works.
    """

def safe_text(data: bytes, /) -> tuple[bytes, list[str]]:
    """``data`` made storable as PostgreSQL text (valid UTF-8, no NUL), and the repairs made.

    What the encoder does to every text cell: a NUL byte becomes the visible text ``\\u0000``
    (``nul_escaped``), a surrogate as ``surrogatepass`` encodes it the text ``\\udXXX``
    (``surrogate_escaped``), any other invalid UTF-8 byte the text ``\\xNN`` (``invalid_utf8``).
    Valid input comes back unchanged with no repairs.
    """

def json_as_text(data: bytes, /) -> tuple[bytes, list[str]]:
    """``data`` (any bytes) as one JSON string of its text: the last resort for a value PostgreSQL
    refused even after ``safe_json``. The string decodes to ``safe_text(data)``; the repairs
    always include ``stored_as_text``."""

def copy_rows(payload: bytes, /) -> list[bytes]:
    """The tuples of a COPY BINARY payload from ``encode_copy_binary``, each with its field count.

    For the writer's error path: when PostgreSQL refuses a batch, the writer bisects it by
    re-sending halves (``copy_payload``) to find the row at fault without re-encoding anything.
    Raises ``NexusCoreError`` for a malformed payload (header with flags or an extension, a
    truncated field, a missing trailer, bytes after it).
    """

def copy_payload(rows: Iterable[bytes], /) -> bytes:
    """A COPY BINARY payload of the header, ``rows`` (tuples as ``copy_rows`` gives them), the
    trailer: the halves of the writer's bisection."""

def merge_payloads(payloads: Sequence[bytes], /) -> bytes:
    """One COPY BINARY payload holding the rows of ``payloads`` (each from the encoder, of one column
    layout; empty ones hold none), in order: what ``copy_payload(row for p in payloads for row in
    copy_rows(p))`` gives, without a bytes object per row. Raises ``NexusCoreError`` for a malformed
    payload."""

def copy_row_last_resort(types: Sequence[str], row: bytes, /) -> bytes:
    """``row`` (one tuple encoded for ``types``, pseudo columns included) with every jsonb/json
    field stored as one JSON string of its text (``json_as_text``) and every text field re-run
    through ``safe_text``; other fields are copied. A ``repairs`` field gains ``stored_as_text``;
    a ``raw`` field that was NULL gets the original of the cell before it when that cell changed.

    For the row PostgreSQL still refused after the encoder's repairs, so that it is stored rather
    than lost. Raises ``NexusCoreError`` for a malformed tuple or one that does not match
    ``types``.
    """

def copy_row_field(row: bytes, index: int, /) -> bytes | None:
    """The bytes of field ``index`` of one tuple (as ``copy_rows`` gives it), or None for NULL.

    For the writer's error path: it reads a failed row's request id (a uuid's 16 bytes) to log it.
    Raises ``NexusCoreError`` for a malformed tuple or an index past its fields.
    """

@final
class SplitBody:
    """A request body split for content-addressed storage (see ``split_body``)."""

    @property
    def envelope(self) -> bytes:
        """The body without ``messages``, ``system`` and ``tools``: a JSON object."""
    @property
    def system_key(self) -> bytes | None:
        """16-byte key of the exact ``system`` JSON, or None when the body has none."""
    @property
    def tools_key(self) -> bytes | None:
        """16-byte key of the exact ``tools`` JSON, or None."""
    @property
    def message_keys(self) -> list[bytes] | None:
        """Key of each element of ``messages`` in order; None when ``messages`` is not a list."""
    @property
    def parts(self) -> list[tuple[bytes, int, bytes]]:
        """Distinct ``(key, kind, exact JSON bytes)``; kind 0 message, 1 system, 2 tools."""

def split_body(body: bytes, /) -> SplitBody:
    """Split a JSON request body; keys are xxh3-128 (big-endian) of each part's exact bytes.

    Claude Code re-sends its whole history every turn, so each message is stored once under its
    key. The GIL is released while splitting. Raises ``NexusCoreError`` for a non-object body.
    """

def join_body(envelope: bytes, system: bytes | None, tools: bytes | None, messages: Sequence[bytes] | None, /) -> bytes:
    """Rebuild a body from its envelope and parts: equal to the original after parsing."""

@final
class RequestAnalysis:
    """A ``/v1/messages`` body analysed in one pass: the storage split and the linking facts.

    Hashes are xxh3-128, 16 bytes big-endian. Messages are normalised before hashing (only ``user`` and
    ``assistant`` kept, ``cache_control`` and thinking blocks ignored, a string equal to one text block,
    ``<system-reminder>`` text removed, a message repeating a tool id dropped, empty messages skipped),
    so a request continues another exactly when one of its prefix hashes is the other's last one.
    """

    @property
    def envelope(self) -> bytes:
        """The body without ``messages``, ``system`` and ``tools`` (as ``SplitBody.envelope``)."""
    @property
    def system_key(self) -> bytes | None:
        """Storage key of the exact ``system`` JSON."""
    @property
    def tools_key(self) -> bytes | None:
        """Storage key of the exact ``tools`` JSON."""
    @property
    def message_keys(self) -> list[bytes] | None:
        """Storage key of each element of ``messages``; None when ``messages`` is not a list."""
    @property
    def part_spans(self) -> list[tuple[bytes, int, int, int]]:
        """Distinct ``(key, kind, start, end)``: the part's exact JSON is ``body[start:end]``."""
    @property
    def model(self) -> str | None: ...
    @property
    def stream(self) -> bool | None: ...
    @property
    def message_count(self) -> int:
        """Raw length of ``messages``, ``role: "system"`` entries included."""
    @property
    def system_message_count(self) -> int:
        """``role: "system"`` entries inside ``messages``."""
    @property
    def prefix_hashes(self) -> bytes:
        """16 bytes per kept message: bytes ``16k:16k+16`` hash kept messages ``0..=k``."""
    @property
    def kept_roles(self) -> bytes:
        """One byte per kept message: ``u`` or ``a``."""
    @property
    def system_hash(self) -> bytes | None:
        """Hash of the system text without the billing line and reminders; None when empty."""
    @property
    def system_block_count(self) -> int: ...
    @property
    def system_head(self) -> str:
        """The first 512 bytes of that system text."""
    @property
    def is_subagent(self) -> bool:
        """The billing line carries ``cc_is_subagent=true``."""
    @property
    def has_tools(self) -> bool: ...
    @property
    def first_user_key(self) -> bytes | None:
        """``prompt_key`` of the first kept user message's text (matches a spawning ``Agent`` prompt)."""
    @property
    def first_user_head(self) -> str: ...
    @property
    def last_user_head(self) -> str: ...
    @property
    def continuation_text(self) -> str | None:
        """The first user text when it opens a post-compaction continuation."""
    @property
    def envelope_session(self) -> str | None:
        """The session the envelope's ``metadata.user_id`` names (``envelope_session``)."""
    @property
    def trimmed_hash(self) -> bytes | None:
        """When the last kept message is a user message of two blocks or more: the history's hash with
        that message's last block left out (what a compaction merged into the last turn continues)."""

def analyze_request(body: bytes, /, *, strict: bool = True) -> RequestAnalysis:
    """Analyse a request body once (GIL released while parsing and hashing).

    With ``strict`` the fields the proxy relies on are checked and a bad body raises
    ``NexusCoreError`` with a message meant for the client (``model: Field required ...``).
    """

def envelope_session(envelope: bytes, /) -> str | None:
    """The session named in ``metadata.user_id`` of a body's envelope: ``..._session_<id>`` (Claude
    Code 1.0, 2.0) or ``{"session_id": ...}`` (2.1), values of up to 512 characters, the session cut
    to 128; None when there is none or the envelope is not a JSON object."""

def session_in_user_id(user_id: str, /) -> str | None:
    """The session a ``metadata.user_id`` value names (``envelope_session``'s rule), or None."""

def prompt_key(text: str, /) -> bytes:
    """The key a sub-agent prompt is matched by: xxh3-128 of ``normalize_text(text)``."""

def normalize_text(text: str, /) -> str:
    """``<system-reminder>`` blocks (and the whitespace before them) removed, CRLF as LF, trimmed."""

LINK_PER_KEY: Final[int]
"""Entries a history hash keeps for each group a pick can prefer (see ``LinkEntries.with_hash``)."""
LINK_CHILD_HISTORIES: Final[int]
"""Distinct child histories a parent keeps, for ordinary children and compactions apart."""

@final
class IndexEntry:
    """What the linker remembers of one request (``nexus.conversations.index.Entry``). Built on each
    lookup from what ``LinkEntries`` holds; compared field by field. Ids that are canonical UUIDs are
    held as 16 bytes and formatted when read."""

    def __new__(
        cls,
        request_id: str,
        project: str,
        timestamp: float,
        request_type: str,
        current: bytes | None,
        conversation_id: str | None,
        branch_id: str | None,
        parent_request_id: str | None,
        is_subtask: bool,
        parent_task_request_id: str | None,
        session: str | None,
        agent_id: str | None,
        status: int = 0,
    ) -> IndexEntry: ...
    @property
    def request_id(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def timestamp(self) -> float: ...
    @property
    def request_type(self) -> str: ...
    @property
    def current(self) -> bytes | None: ...
    @property
    def conversation_id(self) -> str | None: ...
    @property
    def branch_id(self) -> str | None: ...
    @property
    def parent_request_id(self) -> str | None: ...
    @property
    def is_subtask(self) -> bool: ...
    @property
    def parent_task_request_id(self) -> str | None: ...
    @property
    def session(self) -> str | None: ...
    @property
    def agent_id(self) -> str | None: ...
    status: int
    def _fields(self) -> tuple[object, ...]: ...

@final
class LinkEntries:
    """The linker's requests by id, by history hash and by parent, at most ``capacity``, oldest
    forgotten first (``nexus_core/src/linkindex.rs``). Strings entries share are interned once."""

    def __new__(cls, capacity: int, compaction: str) -> LinkEntries: ...
    @property
    def capacity(self) -> int: ...
    examined: int
    def __len__(self) -> int: ...
    def add(self, entry: IndexEntry, /) -> None:
        """File an entry; one already held (by id) is left as it is."""
    def get(self, request_id: str, /) -> IndexEntry | None: ...
    def with_hash(self, project: str, digest: bytes, session: str | None, agent: str | None) -> list[IndexEntry]:
        """Entries of ``project`` whose history hashes to ``digest`` that can win a pick for a request
        from ``session`` and ``agent``: the newest ``LINK_PER_KEY`` of each group (the same may appear
        twice)."""
    def children(self, request_id: str, /) -> list[IndexEntry]:
        """Children that can make a newcomer a branch (at most 4 x ``LINK_CHILD_HISTORIES``)."""
    def revise(self, request_id: str, conversation_id: str | None, branch_id: str | None, is_subtask: bool, /) -> bool:
        """A held entry's conversation, branch and mark, revised; False when it is not held."""
    def move(self, request_id: str, parent_request_id: str | None, parent_task_request_id: str | None, /) -> bool:
        """A held entry filed again under another parent; False when it is not held."""
    def set_status(self, request_id: str, status: int, /) -> bool: ...
    def entries_in_order(self) -> list[IndexEntry]:
        """Every entry, oldest first."""
    def consistent(self) -> bool:
        """Whether every entry a bucket or a parent holds is live and each group within its bound."""
    def symbol_count(self) -> int:
        """Strings interned (projects, sessions, agents, branches, types, ids that are not UUIDs)."""
