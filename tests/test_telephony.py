"""The phone line's parts: signatures behind proxies, safe downloads, flows and plain words."""

import re
import tomllib
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app import jobs, queue
from app.flows import FlowError, available_languages, load_flow, parse_flow
from app.telephony import media as twilio_media
from app.telephony import words
from app.telephony.signature import public_url
from tests.speechgen import telephone
from tests.twilio_fake import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    Speech,
)

EN = Path(__file__).resolve().parent.parent / "ivr_flows" / "en.toml"


@pytest.mark.parametrize(
    ("url", "headers", "config", "expected"),
    [
        ("http://localhost/twilio/voice", {}, {}, "http://localhost/twilio/voice"),
        ("http://localhost/twilio/wait?n=3", {}, {}, "http://localhost/twilio/wait?n=3"),
        (
            "http://10.0.0.5:8000/twilio/voice",
            {},
            {"public_base_url": "https://care.example.org/"},
            "https://care.example.org/twilio/voice",
        ),
        (
            "http://10.0.0.5:8000/twilio/voice",
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "care.example.org"},
            {"trust_forwarded": True},
            "https://care.example.org/twilio/voice",
        ),
        (
            "http://10.0.0.5:8000/twilio/voice",
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
            {},
            "http://10.0.0.5:8000/twilio/voice",
        ),
    ],
)
def test_public_url_is_the_url_twilio_signed(app, url, headers, config, expected):
    with app.test_request_context(url, method="POST", headers=headers) as ctx:
        assert public_url(ctx.request, **config) == expected


@pytest.mark.parametrize(
    ("config", "signed_url", "headers", "status"),
    [
        (
            {"PUBLIC_BASE_URL": "https://care.example.org"},
            "https://care.example.org/twilio/voice",
            {},
            200,
        ),
        ({"PUBLIC_BASE_URL": "https://care.example.org"}, "http://localhost/twilio/voice", {}, 403),
        (
            {"TRUST_FORWARDED_HEADERS": True},
            "https://care.example.org/twilio/voice",
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "care.example.org"},
            200,
        ),
        (
            {},
            "https://care.example.org/twilio/voice",
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "care.example.org"},
            403,
        ),
    ],
)
def test_signatures_behind_a_tls_terminating_proxy(
    twilio, app, config, signed_url, headers, status
):
    app.config.update(config)
    params = {"CallSid": "CA" + "1" * 32, "From": "+15551230001", "AccountSid": ACCOUNT_SID}
    client = app.test_client()
    response = client.post(
        "/twilio/voice",
        data=params,
        headers={"X-Twilio-Signature": twilio.sign(signed_url, params), **headers},
    )
    assert response.status_code == status


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1", ["api.twilio.com"], True),
        ("http://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1", ["api.twilio.com"], False),
        ("https://evil.example/RE1", ["api.twilio.com"], False),
        ("https://api.twilio.com.evil.example/RE1", ["api.twilio.com"], False),
        ("https://api.twilio.com@evil.example/RE1", ["api.twilio.com"], False),
        ("http://169.254.169.254/latest/meta-data", ["api.twilio.com"], False),
        ("http://127.0.0.1:8123/RE1", ["127.0.0.1"], True),
        ("file:///etc/passwd", ["api.twilio.com", ""], False),
    ],
)
def test_recordings_are_fetched_only_from_allowed_hosts(url, allowed, ok):
    if ok:
        twilio_media.check_host(url, allowed)
    else:
        with pytest.raises(twilio_media.HostNotAllowed):
            twilio_media.check_host(url, allowed)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.twilio.com/x/Recordings/RE1", "https://api.twilio.com/x/Recordings/RE1.wav"),
        (
            "https://api.twilio.com/x/Recordings/RE1.mp3",
            "https://api.twilio.com/x/Recordings/RE1.mp3",
        ),
    ],
)
def test_media_url_asks_for_wav(url, expected):
    assert twilio_media.media_url(url) == expected


def test_download_needs_the_account_credentials(media):
    _, url = media.add(b"RIFFdata")
    kwargs = dict(allowed_hosts=["127.0.0.1"], timeout=2, max_bytes=1000)
    assert (
        twilio_media.download(url, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, **kwargs)
        == b"RIFFdata"
    )
    with pytest.raises(twilio_media.DownloadFailed, match="401"):
        twilio_media.download(url, account_sid=ACCOUNT_SID, auth_token="wrong", **kwargs)
    with pytest.raises(twilio_media.DownloadFailed, match="larger"):
        twilio_media.download(
            url,
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            allowed_hosts=["127.0.0.1"],
            timeout=2,
            max_bytes=3,
        )


def test_the_english_flow_loads_and_keeps_the_key_contract(app):
    flow = load_flow(app.config["FLOWS_DIR"], "en")
    assert "en" in available_languages(app.config["FLOWS_DIR"])
    assert "categories" not in available_languages(app.config["FLOWS_DIR"])
    assert flow.menu("main").action_for("yes") == "record"
    assert flow.menu("main").action_for("no") == "status"
    assert flow.menu("readback").action_for("yes") == "confirm"
    assert flow.menu("readback").action_for("no") == "rerecord"
    assert flow.timing.record_silence_seconds >= 5 and flow.timing.silence_retries == 3
    assert flow.meaning_of_word("Yes") == "yes" and flow.meaning_of_word("person") == "person"


def test_every_prompt_a_flow_holds_is_said_and_every_prompt_said_is_held(app):
    """A prompt the code no longer says is dead wording; one it says and no flow has, a crash."""
    code = "\n".join(p.read_text(encoding="utf-8") for p in Path(app.root_path).rglob("*.py"))
    named = set(re.findall(r'prompt\(\s*"([a-z0-9_]+)"', code))  # flow keys are lower-case
    for language in available_languages(app.config["FLOWS_DIR"]):
        flow = load_flow(app.config["FLOWS_DIR"], language)
        menus = {menu.prompt for menu in flow.menus.values()}
        assert named - set(flow.prompts) == set(), language
        assert [k for k in flow.prompts if f'"{k}"' not in code and k not in menus] == []


def _broken(change):
    data = tomllib.loads(EN.read_text())
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["menus"]["main"].update(yes="launch"), "unknown 'launch'"),
        (lambda d: d.update(select_key="1"), "taken by the key contract"),
        (lambda d: d["timing"].update(record_silence_seconds=2), "at least 5"),
        (lambda d: d["menus"]["main"].update(prompt="nowhere"), "missing prompt"),
        (lambda d: d.pop("voice"), "missing or malformed"),
        # A key beyond the contract's may not take one of its keys, or a language's.
        (lambda d: d["menus"]["volunteer"]["keys"].update({"1": "caller"}), "not free to use"),
        (lambda d: d["menus"]["volunteer"]["keys"].update({"9": "caller"}), "not free to use"),
        (lambda d: d["menus"]["volunteer"]["keys"].update({"3": "launch"}), "unknown 'launch'"),
    ],
)
def test_a_broken_flow_file_is_refused_with_a_reason(change, message):
    with pytest.raises(FlowError, match=message):
        parse_flow(_broken(change), "en.toml")


@pytest.mark.parametrize(("number", "spoken"), [(7, "7"), (427, "4 2 7"), (1003, "1 0 0 3")])
def test_numbers_are_read_digit_by_digit(number, spoken):
    assert words.digits(number) == spoken


@pytest.mark.parametrize(
    ("status", "volunteer", "expected"),
    [
        (
            "new",
            None,
            "Your request for a ride somewhere, number 4 2 7, made on Wednesday 4 March, is "
            "waiting for a coordinator.",
        ),
        (
            "assigned",
            {"name": "Mary", "when": "on Tuesday at 10 a.m."},
            "Your request for a ride somewhere, number 4 2 7, has a volunteer, Mary, who is "
            "coming on Tuesday at 10 a.m.",
        ),
        ("done", None, "Your request for a ride somewhere, number 4 2 7, is done."),
    ],
)
def test_status_in_plain_words(app, status, volunteer, expected):
    flow = load_flow(app.config["FLOWS_DIR"], "en")
    request = {"id": 427, "status": status, "created_at": "2026-03-04T10:00:00+00:00"}
    sentence = words.status_sentence(
        request, flow, "a ride somewhere", volunteer, today=date(2026, 3, 9)
    )
    assert sentence == expected


@pytest.mark.parametrize(
    ("made", "spoken"),
    [
        ("2026-12-02T09:00:00+00:00", "made today"),
        ("2026-12-01T23:59:00+00:00", "made yesterday"),
        ("2026-12-01T00:00:00+00:00", "made yesterday"),
        ("2026-11-30T10:00:00+00:00", "made on Monday 30 November"),
        ("2026-01-01T10:00:00+00:00", "made on Thursday 1 January"),
    ],
)
def test_a_status_says_when_it_was_made_as_people_do(app, made, spoken):
    flow = load_flow(app.config["FLOWS_DIR"], "en")
    request = {"id": 4, "status": "new", "created_at": made}
    sentence = words.status_sentence(request, flow, "a ride somewhere", today=date(2026, 12, 2))
    assert f"number 4, {spoken}, is waiting" in sentence
    assert "made on today" not in sentence


@pytest.mark.parametrize(
    ("made", "zone", "spoken"),
    [
        # 8 p.m. in New York on 1 December is already 2 December in UTC: still "today" there.
        ("2026-12-02T01:00:00+00:00", "America/New_York", "made today"),
        ("2026-12-02T01:00:00+00:00", "UTC", "made yesterday"),
    ],
)
def test_today_is_the_lines_own_day(app, made, zone, spoken):
    flow = load_flow(app.config["FLOWS_DIR"], "en")
    request = {"id": 4, "status": "new", "created_at": made}
    today = date(2026, 12, 1) if zone != "UTC" else date(2026, 12, 3)
    sentence = words.status_sentence(
        request, flow, "a ride somewhere", today=today, zone=ZoneInfo(zone)
    )
    assert spoken in sentence


@pytest.mark.slow
def test_reconcile_recovers_a_recording_no_webhook_delivered(twilio, app, db, media):
    missed_sid, _ = media.add(telephone_bytes(), call_sid=None)
    with app.app_context():
        found = twilio_media.reconcile(
            db,
            twilio_media.twilio_client(app.config),
            api_base_url=media.base_url,
            since=None,
            default_language="en",
        )
    assert found == [missed_sid]
    jobs.drain(app)
    request = queue.find_by_source(db, missed_sid)
    assert request["channel"] == "voicemail" and request["stage"] == "transcribed"
    with app.app_context():  # a second night finds nothing new
        assert (
            twilio_media.reconcile(
                db,
                twilio_media.twilio_client(app.config),
                api_base_url=media.base_url,
                since=None,
                default_language="en",
            )
            == []
        )


def telephone_bytes():
    return Speech.from_file(telephone("Please call me back about my garden.")).audio


def test_reconcile_command_queues_one_job_a_day(app, runner):
    app.config.update(TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN)
    for _ in range(2):
        result = runner.invoke(args=["twilio", "reconcile", "--days", "3"])
        assert result.exit_code == 0, result.output
    from app.db import connect

    db = connect(app.config["DATABASE"])
    assert db.execute("SELECT count(*) FROM jobs WHERE kind = 'twilio.reconcile'").fetchone() == (
        1,
    )


def test_every_twilio_command_has_help_with_an_example(runner):
    for args in (["twilio", "--help"], ["twilio", "reconcile", "--help"]):
        result = runner.invoke(args=args)
        assert "Example: flask --app app twilio" in result.output


def test_a_download_whose_worker_always_dies_becomes_a_callback(app, db, twilio, media):
    """A fetch job buried by crashing workers still gets the caller a person's call back."""
    media.fail_next(1)
    recording_sid, url = media.add(b"RIFF....")
    with app.test_request_context():
        from app.db import get_db

        stored = twilio_media.accept(
            get_db(),
            recording_sid=recording_sid,
            call_sid="CA" + "1" * 32,
            url=url,
            purpose="voicemail",
            phone="+15551230009",
            language="en",
        )
    assert stored is None and db["twilio_recordings"].get(recording_sid)["state"] == "pending"
    job = next(db["jobs"].rows_where("kind = ?", [twilio_media.FETCH]))
    start = job["run_after"]
    for attempt in range(job["max_attempts"]):
        assert jobs.claim(db, f"doomed-{attempt}", 10, now=start + 11 * attempt) is not None
    assert jobs.claim(db, "next", 10, now=start + 1000) is None
    assert db["jobs"].get(job["id"])["state"] == "dead"
    assert db["twilio_recordings"].get(recording_sid)["state"] == "dead"
    [request] = db["requests"].rows
    assert request["source_key"] == recording_sid and request["needs_review"] == 1
    assert request["error"].startswith("call back: recording could not be downloaded")
    assert request["phone"] == "+15551230009" and request["urgency"] == "high"
