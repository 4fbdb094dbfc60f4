"""Read a kiosk upload as it streams in, refusing oversized parts before they are held.

The recording goes straight from the socket to a file in small chunks, so a 1 GB upload
costs at most one chunk of memory and stops at the limit of its field ("audio" or "video").
A full disk raises recordings.StorageFull and leaves no partial file.
"""

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import NEED_DATA, Data, Epilogue, Field, File, MultipartDecoder

from ..recordings import naming_full_disk

CHUNK_BYTES = 64 * 1024
# Boundaries, headers and the small text fields of a form never come near this.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
TEXT_FIELDS = ("client_id", "language", "phone")
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class UploadError(Exception):
    """An upload that cannot be accepted as sent."""


class NotMultipart(UploadError):
    """The body is not multipart/form-data."""


class MissingRecording(UploadError):
    """The form holds no "audio" or "video" file."""


class BadField(UploadError):
    """A form field is unknown, repeated or has a value it cannot take."""


class TruncatedUpload(UploadError):
    """The body ended before the form did."""


class UploadTooLarge(UploadError):
    """The upload is larger than its limit."""


@dataclass
class Upload:
    """A recording saved to a temporary file, with the form's text fields."""

    kind: str  # "audio" or "video"
    path: Path
    size: int
    fields: dict = field(default_factory=dict)

    def discard(self):
        """Delete the temporary file."""
        self.path.unlink(missing_ok=True)


def read_upload(stream, content_type, limits, dest_dir, *, content_length=None):
    """Stream a multipart form to a temporary file under dest_dir; return the Upload."""
    mimetype, options = parse_options_header(content_type or "")
    boundary = options.get("boundary", "").encode()
    if mimetype != "multipart/form-data" or not boundary:
        raise NotMultipart("send the recording as multipart/form-data")
    ceiling = max(limits.values()) + FORM_OVERHEAD_BYTES
    if content_length is not None and content_length > ceiling:
        # Refused from the header alone: not one byte of the body is read.
        raise UploadTooLarge(f"the upload is {_mb(content_length)}; the limit is {_mb(ceiling)}")
    reader = _FormReader(limits, dest_dir)
    try:
        # A full disk shows only when a buffered write reaches it: at write, flush or close.
        with naming_full_disk():
            Path(dest_dir).mkdir(parents=True, exist_ok=True)
            reader.run(stream, boundary)
            return reader.result()
    except BaseException:
        reader.discard()
        raise


class _FormReader:
    """Feed body chunks through werkzeug's multipart decoder into a file and fields."""

    def __init__(self, limits, dest_dir):
        self.limits = limits
        self.dest_dir = dest_dir
        self.fields = {}
        self.kind = None
        self.path = None
        self.out = None
        self.size = 0
        self.current = None  # ("field", name, bytearray) or ("file", name)
        self.finished = False

    def run(self, stream, boundary):
        """Read the whole body, chunk by chunk."""
        # Field sizes are checked in take(): the decoder's own memory check counts its
        # whole unparsed buffer, which holds recording bytes too.
        decoder = MultipartDecoder(boundary, max_parts=MAX_PARTS)
        while not self.finished:
            chunk = stream.read(CHUNK_BYTES)
            try:
                decoder.receive_data(chunk or None)
                event = decoder.next_event()
                while event is not NEED_DATA and not self.finished:
                    self.handle(event)
                    event = decoder.next_event() if not self.finished else NEED_DATA
            except RequestEntityTooLarge as exc:
                raise BadField(f"the form has more than {MAX_PARTS} parts") from exc
            except ValueError as exc:
                raise TruncatedUpload(f"the form is malformed or cut off: {exc}") from exc
            if not chunk and not self.finished:
                raise TruncatedUpload("the upload ended before the form was complete")

    def handle(self, event):
        """Act on one decoder event."""
        if isinstance(event, File):
            self.open_file(event.name)
        elif isinstance(event, Field):
            if event.name not in TEXT_FIELDS or event.name in self.fields:
                raise BadField(f"unexpected or repeated form field {event.name!r}")
            self.current = ("field", event.name, bytearray())
        elif isinstance(event, Data):
            self.take(event)
        elif isinstance(event, Epilogue):
            self.finished = True

    def open_file(self, name):
        """Start writing the recording part to a temporary file."""
        if name not in self.limits:
            raise BadField(f"unexpected file field {name!r}: send 'audio' or 'video'")
        if self.kind is not None:
            raise BadField("send one recording per upload")
        self.kind = name
        # Named after this process, so a restart can tell a dead upload from a live one.
        fd, path = tempfile.mkstemp(
            prefix=f"upload-{os.getpid()}-", suffix=".part", dir=self.dest_dir
        )
        self.path = Path(path)
        self.out = os.fdopen(fd, "wb")
        self.current = ("file", name)

    def take(self, event):
        """Append a piece of the current part."""
        if self.current is None:
            return
        if self.current[0] == "file":
            self.size += len(event.data)
            if self.size > self.limits[self.kind]:
                raise UploadTooLarge(
                    f"the {self.kind} is larger than the {_mb(self.limits[self.kind])} limit"
                )
            self.out.write(event.data)
        else:
            buffer = self.current[2]
            buffer.extend(event.data)
            if len(buffer) > MAX_FIELD_BYTES:
                raise BadField(f"form field {self.current[1]!r} is too long")
        if not event.more_data:
            if self.current[0] == "field":
                self.fields[self.current[1]] = self.current[2].decode("utf-8", "replace").strip()
            self.current = None

    def result(self):
        """Return the finished Upload after checking the form is complete."""
        if self.out is not None:
            self.out.close()
        if self.kind is None:
            raise MissingRecording("the form has no 'audio' or 'video' file")
        client_id = self.fields.get("client_id")
        if client_id and not CLIENT_ID.match(client_id):
            self.discard()
            raise BadField("client_id must be 8-64 letters, digits, '-' or '_'")
        return Upload(kind=self.kind, path=self.path, size=self.size, fields=self.fields)

    def discard(self):
        """Close and delete a partly written file."""
        # On a full disk closing fails too (its last bytes find no room): delete it anyway.
        with contextlib.suppress(OSError):
            if self.out is not None and not self.out.closed:
                self.out.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _mb(size):
    """Format a byte count in megabytes for people."""
    return f"{size / 1_000_000:.1f} MB" if size < 10**8 else f"{size / 1_000_000:.0f} MB"
