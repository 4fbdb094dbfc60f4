"""Twilio recordings: downloaded only from allowed hosts, stored before Twilio hears 2xx."""

import base64
import contextlib
import http.client
import ipaddress
import logging
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from flask import current_app

from .. import jobs, pipeline, queue, recordings
from ..db import cannot_write, get_db
from . import store

log = logging.getLogger(__name__)

FETCH = "twilio.fetch_recording"
RECONCILE = "twilio.reconcile"
LOOPBACK_NAMES = {"localhost"}
# How a recording's error starts when our disk, not Twilio, kept it from being stored.
DISK_FULL = "disk full"
DATA_DIR_UNWRITABLE = "data directory unwritable"
OUR_STORAGE = (DISK_FULL, DATA_DIR_UNWRITABLE)


class RecordingError(Exception):
    """A Twilio recording could not be fetched."""


class HostNotAllowed(RecordingError):
    """A recording URL points somewhere other than the allowed Twilio hosts."""


class DownloadFailed(RecordingError):
    """Twilio's media server did not hand over the recording this time."""


class DatabaseUnavailable(RecordingError):
    """The database could not be written (busy, unwritable or full): the recording is not stored.

    Twilio keeps the audio. A recording noted before the failure stays pending for the nightly
    requeue; one never noted is found by the nightly reconcile, which lists Twilio's recordings.
    """


def _split(url):
    """Split a URL, refusing one that cannot be parsed (``http://[::1``) like a foreign host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  raises ValueError for a port that is not a number
    except ValueError as exc:
        raise HostNotAllowed(f"recording URL {url!r} cannot be parsed: {exc}") from exc
    return parts


def media_url(recording_url):
    """Return the URL of a recording's WAV: Twilio's RecordingUrl has no extension."""
    parts = _split(recording_url)
    if PurePosixPath(parts.path).suffix:
        return recording_url
    return parts._replace(path=parts.path + ".wav").geturl()


def check_host(url, allowed_hosts):
    """Refuse any URL that is not on an allowed host (no SSRF); plain http only on loopback."""
    parts = _split(url)
    host = (parts.hostname or "").lower()
    allowed = {h.lower() for h in allowed_hosts}
    if host not in allowed and parts.netloc.lower() not in allowed:
        raise HostNotAllowed(f"recording host {host!r} is not in TWILIO_RECORDING_HOSTS")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(host):
        return
    raise HostNotAllowed(f"recording URL scheme {parts.scheme!r} is not allowed for {host!r}")


def _is_loopback(host):
    """Tell whether a host name is this machine (a test's fake Twilio)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _AllowedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another allowed host; credentials never go along."""

    def __init__(self, allowed_hosts):
        super().__init__()
        self.allowed_hosts = allowed_hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        """Check the redirect target before following it."""
        check_host(newurl, self.allowed_hosts)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """Cut every connection of one download when its whole time is up, however it trickles."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = False
        self.timers = []

    def connect(self, *args, **kwargs):
        """Open a connection whose socket is shut down at the deadline, TLS handshake included."""
        sock = socket.create_connection(*args, **kwargs)
        timer = threading.Timer(max(0.0, self.ends - time.monotonic()), self._cut, [sock])
        timer.daemon = True
        timer.start()
        self.timers.append(timer)
        return sock

    def _cut(self, sock):
        self.expired = True
        # Already closed means the download finished just as time ran out.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self):
        """Stop watching: the download is over."""
        for timer in self.timers:
            timer.cancel()


def _watched(connection_class, deadline):
    """Return a connection class whose sockets the deadline watches."""

    class Watched(connection_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = deadline.connect

    return Watched


class _DeadlineHTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_watched(http.client.HTTPConnection, self.deadline), req)


class _DeadlineHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(
            _watched(http.client.HTTPSConnection, self.deadline), req, context=self._context
        )


def download(url, *, account_sid, auth_token, allowed_hosts, timeout, max_bytes):
    """Fetch a recording's audio within timeout seconds in all; return its bytes."""
    url = media_url(url)
    check_host(url, allowed_hosts)
    request = urllib.request.Request(url, headers={"Accept": "audio/wav, audio/*"})
    token = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
    # Unredirected: the account's credentials are sent to Twilio's host and nowhere else.
    request.add_unredirected_header("Authorization", f"Basic {token}")
    # A socket timeout bounds each read only; Twilio gives a webhook 15 s in all.
    deadline = _Deadline(timeout)
    handlers = [_AllowedRedirects(allowed_hosts), _DeadlineHTTP(deadline), _DeadlineHTTPS(deadline)]
    if _is_loopback((urlsplit(url).hostname or "").lower()):
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            data = response.read(max_bytes + 1)
    except HostNotAllowed:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if deadline.expired:
            raise DownloadFailed(f"download of {url} took longer than {timeout} s") from exc
        raise DownloadFailed(f"download of {url} failed: {exc}") from exc
    finally:
        deadline.cancel()
    if deadline.expired:
        raise DownloadFailed(f"download of {url} took longer than {timeout} s")
    if len(data) > max_bytes:
        raise DownloadFailed(f"recording at {url} is larger than {max_bytes} bytes")
    if not data:
        raise DownloadFailed(f"recording at {url} is empty")
    return data


def _download_for(config, url):
    """Download with this app's Twilio account, hosts and limits."""
    return download(
        url,
        account_sid=config["TWILIO_ACCOUNT_SID"],
        auth_token=config["TWILIO_AUTH_TOKEN"],
        allowed_hosts=config["TWILIO_RECORDING_HOSTS"],
        timeout=config["TWILIO_DOWNLOAD_TIMEOUT"],
        max_bytes=config["TWILIO_MAX_RECORDING_BYTES"],
    )


def note(db, *, recording_sid, call_sid, url, purpose, phone, language, duration_s=None):
    """Keep a recording's metadata before anything else, once per RecordingSid; return it."""
    stamp = queue.now()
    # In a write transaction: the lock is waited for and retried, and a lock that outlasts it
    # is DatabaseBusy, not a raw "database is locked".
    with db.atomic():
        db.execute(
            "INSERT INTO twilio_recordings (recording_sid, call_sid, url, purpose, phone, language,"
            " duration_s, state, attempts, created_at, updated_at) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?) ON CONFLICT(recording_sid) DO NOTHING",
            [recording_sid, call_sid, url, purpose, phone, language, duration_s, stamp, stamp],
        )
    return recording(db, recording_sid)


def recordings_of_call(db, call_sid):
    """Return the recordings noted for a call, oldest first."""
    return list(db["twilio_recordings"].rows_where("call_sid = ?", [call_sid], order_by="rowid"))


def recording(db, recording_sid):
    """Return a noted recording, or None."""
    return next(db["twilio_recordings"].rows_where("recording_sid = ?", [recording_sid]), None)


def accept(db, **meta):
    """Store a recording and queue it for transcription, or a retried download; return request.

    Raises recordings.StorageFull (or StorageUnavailable) when the data directory cannot take
    it: the recording stays pending and a download job is queued, so the audio is fetched
    again once there is room. Raises DatabaseUnavailable when the database cannot be written.
    """
    try:
        return _accept(db, **meta)
    except sqlite3.OperationalError as exc:
        if not cannot_write(exc):
            raise
        log.error(
            "recording %s not stored, the database cannot be written: %s",
            meta["recording_sid"],
            exc,
        )
        raise DatabaseUnavailable(f"recording {meta['recording_sid']} not stored: {exc}") from exc


def _accept(db, **meta):
    row = note(db, **meta)
    if row["request_id"]:
        return queue.get(db, row["request_id"])  # Twilio's retry: stored already
    try:
        audio = _download_for(current_app.config, row["url"])
    except HostNotAllowed as exc:
        _refuse(db, row, exc)
        return None
    except DownloadFailed as exc:
        with db.atomic():
            _failed_attempt(db, row, exc)
            _queue_fetch(db, row["recording_sid"], priority=20)
        return None
    try:
        return _store(db, row, audio)
    except OSError as exc:
        if not _disk_full(exc):
            raise
        with db.atomic():
            _out_of_room(db, row, exc)
            _queue_fetch(db, row["recording_sid"], priority=20)
        if isinstance(exc, recordings.StorageFull):
            raise
        raise recordings.StorageFull(exc.errno, f"no room to store {row['recording_sid']}") from exc


def _queue_fetch(db, recording_sid, *, priority, key=None):
    """Queue a download of a pending recording; one job per key."""
    return jobs.enqueue(
        db,
        FETCH,
        {"recording_sid": recording_sid},
        key=key or f"{FETCH}:{recording_sid}",
        priority=priority,
        max_attempts=current_app.config["TWILIO_FETCH_ATTEMPTS"] + 1,
    )


def _disk_full(exc):
    """Tell whether a failed save was our disk having no room, not the recording."""
    return isinstance(exc, recordings.StorageFull) or exc.errno in recordings.FULL_ERRNOS


def _out_of_room(db, row, exc):
    """Note why a downloaded recording is still pending: our disk, not Twilio, failed."""
    log.error("recording %s could not be stored: %s", row["recording_sid"], exc)
    why = DATA_DIR_UNWRITABLE if isinstance(exc, recordings.StorageUnavailable) else DISK_FULL
    db["twilio_recordings"].update(
        row["recording_sid"], {"error": f"{why}: {exc}", "updated_at": queue.now()}
    )


def _store(db, row, audio):
    """Hand downloaded audio to the pipeline and mark the recording stored."""
    request = pipeline.receive(
        db,
        audio,
        channel="voicemail" if row["purpose"] == "voicemail" else "phone",
        phone=row["phone"],
        language=row["language"],
        source_key=row["recording_sid"],
        suffix=".wav",
    )
    with db.atomic():
        db["twilio_recordings"].update(
            row["recording_sid"],
            {
                "state": "stored",
                "request_id": request["id"],
                "error": None,
                "updated_at": queue.now(),
            },
        )
        if _caller_gone(store.get_call(db, row["call_sid"]) if row["call_sid"] else None):
            # Stored after the caller stopped listening: nobody heard it read back.
            pipeline.transition(
                db,
                request["id"],
                "unconfirmed",
                actor="system",
                detail={"reason": "stored after the call ended"},
            )
    return queue.get(db, request["id"])


def _caller_gone(call):
    """Tell whether a call can no longer hear its message read back (ended, or said goodbye)."""
    return call is None or call["call_status"] in store.ENDED or call["menu"] == "done"


def call_ended(db, call_sid):
    """Mark every request of a call's recordings that nobody confirmed as needing review.

    Whichever comes first, the call's end or a recording's storing: both look, so a message
    stored while the caller was still holding is flagged when they hang up, and one stored
    later is flagged as it is stored.
    """
    for row in recordings_of_call(db, call_sid):
        if row["request_id"]:
            pipeline.transition(
                db,
                row["request_id"],
                "unconfirmed",
                actor="system",
                detail={"reason": "caller hung up before confirming"},
            )


def _failed_attempt(db, row, exc):
    """Count a failed download attempt."""
    log.warning("recording %s: %s", row["recording_sid"], exc)
    db.execute(
        "UPDATE twilio_recordings SET attempts = attempts + 1, error = ?, updated_at = ?"
        " WHERE recording_sid = ?",
        [str(exc), queue.now(), row["recording_sid"]],
    )


def _refuse(db, row, exc):
    """Never fetch from a host we do not trust; a person calls the caller back instead."""
    log.error("recording %s refused: %s", row["recording_sid"], exc)
    with db.atomic():
        db["twilio_recordings"].update(
            row["recording_sid"], {"state": "refused", "error": str(exc), "updated_at": queue.now()}
        )
        _callback_request(db, row, f"recording refused: {exc}")


def _callback_request(db, row, reason):
    """Queue a 'call back' item for a recording nobody could fetch; return it."""
    request = pipeline.call_back(
        db,
        channel="voicemail" if row["purpose"] == "voicemail" else "phone",
        phone=row["phone"],
        language=row["language"] or current_app.config["DEFAULT_LANGUAGE"],
        source_key=row["recording_sid"],
        reason=f"call back: {reason}",
        urgency="high",
    )
    db["twilio_recordings"].update(
        row["recording_sid"], {"request_id": request["id"], "updated_at": queue.now()}
    )
    return request


def fetch_died(db, payload, reason):
    """When the download job is buried, a person calls back: the caller was told we have it."""
    row = recording(db, payload["recording_sid"])
    if row is None or row["state"] != "pending":
        return
    if (row["error"] or "").startswith(OUR_STORAGE):
        # Our disk, not Twilio, failed: a person calls back now, and the recording stays
        # pending so the nightly reconcile fetches its audio once there is room.
        pipeline.call_back(
            db,
            channel="voicemail" if row["purpose"] == "voicemail" else "phone",
            phone=row["phone"],
            language=row["language"] or current_app.config["DEFAULT_LANGUAGE"],
            source_key=f"callback:{row['recording_sid']}",
            reason=f"call back: recording not stored yet, {row['error']}",
            urgency="high",
        )
        return
    db["twilio_recordings"].update(
        row["recording_sid"], {"state": "dead", "error": reason, "updated_at": queue.now()}
    )
    _callback_request(db, row, f"recording could not be downloaded: {reason}")


@jobs.handler(FETCH, on_dead=fetch_died)
def fetch_job(payload):
    """Job: download a recording Twilio told us about, until it is stored or given up."""
    db = get_db()
    config = current_app.config
    row = recording(db, payload["recording_sid"])
    if row is None or row["state"] != "pending":
        return
    try:
        audio = _download_for(config, row["url"])
    except HostNotAllowed as exc:
        _refuse(db, row, exc)
        return
    except DownloadFailed as exc:
        _failed_attempt(db, row, exc)
        if row["attempts"] + 1 >= config["TWILIO_FETCH_ATTEMPTS"]:
            db["twilio_recordings"].update(
                row["recording_sid"], {"state": "dead", "updated_at": queue.now()}
            )
            _callback_request(db, row, f"recording could not be downloaded: {exc}")
            return
        raise
    try:
        _store(db, row, audio)
    except OSError as exc:
        if not _disk_full(exc):
            raise
        # Not Twilio's fault: the recording stays pending and this job tries again later.
        _out_of_room(db, row, exc)
        raise


def twilio_client(config):
    """Return a twilio REST Client for the account, pointed at TWILIO_API_BASE_URL."""
    from twilio.rest import Client

    client = Client(config["TWILIO_ACCOUNT_SID"], config["TWILIO_AUTH_TOKEN"])
    client.api.base_url = config["TWILIO_API_BASE_URL"]
    return client


def reconcile(db, client, *, api_base_url, since, default_language):
    """Fetch every account recording since a date that we never stored; return their SIDs."""
    found = requeue_pending(db)
    for item in client.recordings.list(date_created_after=since):
        if item.status not in (None, "completed") or recording(db, item.sid):
            continue
        if queue.find_by_source(db, item.sid):
            continue
        call = store.get_call(db, item.call_sid) if item.call_sid else None
        uri = item.uri.removesuffix(".json")
        note(
            db,
            recording_sid=item.sid,
            call_sid=item.call_sid,
            url=api_base_url.rstrip("/") + uri,
            purpose="voicemail",  # we missed its call: a person listens and calls back
            phone=call["phone"] if call else None,
            language=call["language"] if call else default_language,
            duration_s=float(item.duration) if item.duration else None,
        )
        _queue_fetch(db, item.sid, priority=5)
        found.append(item.sid)
    return found


def requeue_pending(db, today=None):
    """Queue one more download of each noted recording still without a request; return SIDs."""
    day = (today or datetime.now(UTC).date()).isoformat()
    # Its own job may have died while the disk was full: a new key per night tries again.
    sids = [
        sid
        for (sid,) in db.execute(
            "SELECT recording_sid FROM twilio_recordings"
            " WHERE state = 'pending' AND request_id IS NULL ORDER BY created_at"
        ).fetchall()
    ]
    for sid in sids:
        _queue_fetch(db, sid, priority=5, key=f"{FETCH}:{sid}:{day}")
    return sids


@jobs.handler(RECONCILE)
def reconcile_job(payload):
    """Job: recover recordings from the last days that no webhook delivered."""
    config = current_app.config
    since = datetime.now(UTC) - timedelta(days=payload.get("days", 2))
    reconcile(
        get_db(),
        twilio_client(config),
        api_base_url=config["TWILIO_API_BASE_URL"],
        since=since,
        default_language=config["DEFAULT_LANGUAGE"],
    )
