"""The typed settings table: environment values parsed by type, wrong ones refused by name."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import REPO_ROOT, create_app
from app.settings import BY_NAME, SETTINGS, SettingsError, load, markdown_table
from app.settings import shown as settings_shown

INSTANCE = Path("/srv/instance")


def loaded(**environ):
    """Load settings from an environment of CARECALL_ names."""
    env = {f"CARECALL_{k}": v for k, v in environ.items()}
    return load(env, instance=INSTANCE, repo=REPO_ROOT).values


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("TWILIO_RECORDING_HOSTS", "api.twilio.com", ("api.twilio.com",)),
        ("TWILIO_RECORDING_HOSTS", "api.twilio.com, 127.0.0.1", ("api.twilio.com", "127.0.0.1")),
        ("TWILIO_RECORDING_HOSTS", '["api.twilio.com"]', ("api.twilio.com",)),
        ("TRUST_FORWARDED_HEADERS", "False", False),
        ("TRUST_FORWARDED_HEADERS", "no", False),
        ("TRUST_FORWARDED_HEADERS", "0", False),
        ("TRUST_FORWARDED_HEADERS", "TRUE", True),
        ("TRUST_FORWARDED_HEADERS", "yes", True),
        ("COORDINATOR_HOURS", "9-17", (9, 17)),
        ("COORDINATOR_HOURS", "0,24", (0, 24)),
        ("COORDINATOR_HOURS", "[8, 20]", (8, 20)),
        ("COORDINATOR_DAYS", "mon-fri", (0, 1, 2, 3, 4)),
        ("COORDINATOR_DAYS", "sat,sun", (5, 6)),
        ("COORDINATOR_DAYS", "[0, 2]", (0, 2)),
        ("KIOSK_MAX_AUDIO_BYTES", "50MB", 50_000_000),
        ("KIOSK_MAX_AUDIO_BYTES", "2 MiB", 2 * 1024 * 1024),
        ("KIOSK_MAX_AUDIO_BYTES", "123456", 123456),
        ("MAX_AUDIO_SECONDS", "30", 30),
        ("JOB_LEASE_SECONDS", "2.5", 2.5),
        ("SESSION_LIFETIME", "8h", 8 * 3600.0),
        ("SESSION_LIFETIME", "90m", 5400.0),
        ("SECRET_KEY", "12345678901234567890", "12345678901234567890"),
        ("SPEECH_ENGINES", '{"en": "whisper:whisper-base"}', {"en": "whisper:whisper-base"}),
        ("SPEECH_ENGINES", "en=whisper:whisper-base", {"en": "whisper:whisper-base"}),
        ("PUBLIC_BASE_URL", "https://care.example.org/", "https://care.example.org"),
        ("COORDINATOR_NUMBER", "+15551234567", "+15551234567"),
        ("COORDINATOR_TIMEZONE", "Europe/London", "Europe/London"),
        ("WORKER", "None", "none"),
        ("RECURRING_HORIZON", "2d", 2 * 86400.0),
        ("RECURRING_HORIZON", "6h", 6 * 3600.0),
        ("RATING_CALL_DELAY", "5m", 300.0),
        ("RATING_CALL_DELAY", "0", 0.0),
        # Quiet hours may cross midnight, lie within a day, or be off.
        ("RATING_QUIET_HOURS", "21-8", (21, 8)),
        ("RATING_QUIET_HOURS", "12-14", (12, 14)),
        ("RATING_QUIET_HOURS", "[20, 9]", (20, 9)),
        ("RATING_QUIET_HOURS", "off", None),
        ("RATING_QUIET_HOURS", "None", None),
    ],
)
def test_environment_values_are_parsed_by_type(name, raw, expected):
    assert loaded(**{name: raw})[name] == expected


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("TWILIO_RECORDING_HOSTS", "https://1/x", "not a host name"),
        ("TWILIO_RECORDING_HOSTS", "1", "not a host name"),
        ("TRUST_FORWARDED_HEADERS", "maybe", "true or false"),
        ("COORDINATOR_HOURS", "17-9", "hours like 9-17"),
        ("COORDINATOR_HOURS", "9 to 5", "hours like 9-17"),
        ("RATING_QUIET_HOURS", "9-9", "hours like 21-8"),  # no hours, or every hour
        ("RATING_QUIET_HOURS", "0-24", "hours like 21-8"),
        ("RATING_QUIET_HOURS", "25-8", "hours like 21-8"),
        ("RATING_QUIET_HOURS", "always", "hours like 21-8"),
        ("RATING_CALL_DELAY", "-1", "seconds, or a time like"),
        ("COORDINATOR_DAYS", "funday", "not a day"),
        ("KIOSK_MAX_AUDIO_BYTES", "50 parsecs", "size in bytes"),
        ("KIOSK_MAX_AUDIO_BYTES", "0", "between"),
        ("MAX_AUDIO_SECONDS", "thirty", "whole number"),
        ("MAX_AUDIO_SECONDS", "0", "whole number from 1"),
        ("JOB_LEASE_SECONDS", "nan", "number"),
        ("SECRET_KEY", "short", "at least 16"),
        ("SPEECH_ENGINES", "en=whisper", "ENGINE:MODEL"),
        ("SPEECH_ENGINES", '{"en": "espeak:x"}', "ENGINE:MODEL"),
        ("SPEECH_ENGINES", "{not json", "not valid JSON"),
        ("PUBLIC_BASE_URL", "care.example.org", "http"),
        ("PUBLIC_BASE_URL", "http://[::1", "http"),
        ("COORDINATOR_NUMBER", "555-1234", "E.164"),
        ("EMERGENCY_NUMBER", "nine one one", "digits"),
        ("COORDINATOR_TIMEZONE", "Mars/Olympus", "time zone"),
        ("WORKER", "threads", "one of inprocess, none"),
        ("RECURRING_HORIZON", "30m", "from 7200 to"),
        ("RECURRING_HORIZON", "soon", "seconds, or a time like 15m"),
        ("DEFAULT_LANGUAGE", "fr", "no speech engine"),
        ("LOCKOUT_BASE_SECONDS", "7200", "must not exceed"),
    ],
)
def test_a_wrong_value_fails_naming_the_variable(name, raw, says):
    with pytest.raises(SettingsError) as caught:
        loaded(**{name: raw})
    message = caught.value.message
    assert says in message
    if name not in ("DEFAULT_LANGUAGE", "LOCKOUT_BASE_SECONDS"):
        assert message.startswith(f"CARECALL_{name}=")


def test_a_secret_is_never_echoed_in_an_error():
    with pytest.raises(SettingsError) as caught:
        loaded(SECRET_KEY="hunter2")
    assert "hunter2" not in caught.value.message


def test_an_unknown_carecall_variable_is_refused_with_a_suggestion():
    with pytest.raises(SettingsError, match="did you mean CARECALL_DATABASE"):
        loaded(DATABSE="/tmp/x.db")


def test_twilio_s_own_variable_names_are_read_and_ours_win():
    env = {"TWILIO_AUTH_TOKEN": "from-twilio-name", "TWILIO_ACCOUNT_SID": "AC" + "1" * 32}
    values = load(env, instance=INSTANCE, repo=REPO_ROOT).values
    assert values["TWILIO_AUTH_TOKEN"] == "from-twilio-name"
    env["CARECALL_TWILIO_AUTH_TOKEN"] = "from-carecall-name"
    assert load(env, instance=INSTANCE, repo=REPO_ROOT).values["TWILIO_AUTH_TOKEN"] == (
        "from-carecall-name"
    )


def test_code_values_are_checked_too():
    with pytest.raises(SettingsError, match="KIOSK_MAX_AUDIO_BYTES"):
        load({}, {"KIOSK_MAX_AUDIO_BYTES": "lots"}, instance=INSTANCE, repo=REPO_ROOT)


def test_defaults_are_valid_and_name_the_instance():
    values = loaded()
    assert values["DATABASE"] == str(INSTANCE / "carecall.db")
    assert values["TWILIO_RECORDING_HOSTS"] == ("api.twilio.com",)
    assert set(values) == set(BY_NAME)


def test_every_setting_has_help_and_a_valid_default():
    for setting in SETTINGS:
        assert setting.help.strip(), setting.name
        if setting.default is not None:
            setting.value(setting.default)


def test_a_typo_in_code_config_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="DATABSE"):
        create_app({"DATABSE": str(tmp_path / "x.db"), "SECRET_KEY": "k" * 32})


def test_readme_lists_every_setting_as_generated():
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert block, "README has no generated settings table"
    assert block[1] == markdown_table(), "regenerate: flask --app app settings --markdown"


def test_settings_command_shows_sources_and_masks_secrets(make_app):
    app = make_app(SECRET_KEY="a-very-secret-key-indeed")
    result = app.test_cli_runner().invoke(args=["settings"])
    assert result.exit_code == 0
    assert "a-very-secret-key-indeed" not in result.output
    assert re.search(r"CARECALL_SECRET_KEY\s+\*+\s+code", result.output)
    assert re.search(r"CARECALL_EMERGENCY_NUMBER\s+911\s+default", result.output)


def test_a_wrong_environment_value_stops_the_command_line_cleanly(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CARECALL_DATABASE": str(tmp_path / "x.db"),
        "CARECALL_KIOSK_MAX_AUDIO_BYTES": "50 parsecs",
    }
    flask = Path(sys.executable).with_name("flask")
    done = subprocess.run(
        [str(flask), "--app", "app", "settings"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "CARECALL_KIOSK_MAX_AUDIO_BYTES='50 parsecs'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_default_engines_use_only_models_that_scripts_run_installs():
    """A fresh install from the README is ready: ./scripts/run installs every default model."""
    run = (REPO_ROOT / "scripts" / "run").read_text()
    installed = set(re.search(r"scripts/setup ([^\n]*)", run).group(1).split())
    wanted = {spec.split(":", 1)[1] for spec in BY_NAME["SPEECH_ENGINES"].default.values()}
    assert wanted <= installed, wanted - installed


def test_the_default_text_models_are_the_ones_setup_installs():
    """Every model the default TEXT_MODEL joins is installed by scripts/setup."""
    setup = (REPO_ROOT / "scripts" / "setup").read_text()
    installed = set(re.search(r"for text_model in ([^;]*);", setup).group(1).split())
    assert set(BY_NAME["TEXT_MODEL"].default.split("+")) == installed


@pytest.mark.parametrize(
    ("name", "raw", "shown"),
    [
        ("COORDINATOR_HOURS", "9-17", "9-17"),
        ("RATING_QUIET_HOURS", "21-8", "21-8"),
        ("RATING_CALL_DELAY", "1m", "1m"),
        ("COORDINATOR_DAYS", "mon-fri", "mon-fri"),
        ("COORDINATOR_DAYS", "sat,sun,wed", "wed,sat,sun"),
        ("COORDINATOR_DAYS", "0,1,2,4", "mon-wed,fri"),
        ("KIOSK_MAX_AUDIO_BYTES", "50MB", "50MB"),
        ("MAX_CONTENT_LENGTH", "1MiB", "1MiB"),
        ("KIOSK_MAX_AUDIO_BYTES", "1234", "1234"),
        ("SESSION_LIFETIME", "8h", "8h"),
        ("SESSION_LIFETIME", "90", "90s"),
        ("TRUST_FORWARDED_HEADERS", "False", "false"),
        ("SPEECH_ENGINES", "en=whisper:whisper-tiny-en", "en=whisper:whisper-tiny-en"),
    ],
)
def test_settings_are_shown_the_way_they_are_entered(name, raw, shown):
    """`flask settings` writes a value in the form a person types, so it reads back the same."""
    setting = BY_NAME[name]
    value = loaded(**{name: raw})[name]
    assert settings_shown(setting, value) == shown
    assert loaded(**{name: settings_shown(setting, value)})[name] == value


def test_a_busy_timeout_twilio_would_outwait_is_refused():
    """Three tries of the busy timeout must fit in the 15 s Twilio waits for a webhook."""
    with pytest.raises(SettingsError, match="CARECALL_DB_BUSY_TIMEOUT_SECONDS='600'"):
        loaded(DB_BUSY_TIMEOUT_SECONDS="600")


def test_an_auth_token_without_its_account_sid_is_refused_at_start_up():
    """Downloads need both; a token alone would tell callers "we have it" and lose the audio."""
    with pytest.raises(SettingsError, match="CARECALL_TWILIO_ACCOUNT_SID is unset"):
        loaded(TWILIO_AUTH_TOKEN="long-enough-token")


def test_a_minimum_length_is_in_the_settings_table():
    assert BY_NAME["TWILIO_AUTH_TOKEN"].kind.what == "text of at least 8 characters"


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("FLOWS_DIR", "/nonexistent", "CARECALL_FLOWS_DIR='/nonexistent': no such folder"),
        ("FLOWS_DIR", str(REPO_ROOT / "README.md"), "CARECALL_FLOWS_DIR="),
        ("MODELS_DIR", "/nonexistent", "CARECALL_MODELS_DIR='/nonexistent': no such folder"),
        ("KIOSK_LANGUAGE", "zz", "CARECALL_KIOSK_LANGUAGE='zz': no kiosk wording"),
        ("TEXT_MODEL", "e5-small+nope", "CARECALL_TEXT_MODEL='e5-small+nope': 'nope' is not a"),
        ("TEXT_MODEL", "whisper-tiny-en", "text models: e5-small, minilm-l6, joined with +"),
        ("TEXT_MODEL", "minilm-l6+minilm-l6", "'minilm-l6+minilm-l6': names minilm-l6 twice"),
        ("TEXT_MODEL", "E5-small", "CARECALL_TEXT_MODEL='E5-small': expected lowercase"),
        ("TEXT_MODEL", "e5-small+", "CARECALL_TEXT_MODEL='e5-small+': expected lowercase"),
    ],
)
def test_folders_and_languages_are_checked_at_start_up(name, raw, says):
    """A missing flows folder or language would otherwise fail every call, not start-up."""
    with pytest.raises(SettingsError) as caught:
        loaded(**{name: raw})
    assert says in caught.value.message


def test_a_default_language_without_a_phone_flow_is_refused():
    engines = '{"en": "whisper:whisper-tiny-en", "ko": "vosk:vosk-ko"}'
    with pytest.raises(SettingsError, match="CARECALL_DEFAULT_LANGUAGE='ko': no phone flow"):
        loaded(DEFAULT_LANGUAGE="ko", SPEECH_ENGINES=engines)


def test_a_flows_folder_without_the_default_language_is_refused(tmp_path):
    (tmp_path / "categories.toml").write_text("")
    with pytest.raises(SettingsError, match="CARECALL_DEFAULT_LANGUAGE='en': no phone flow"):
        loaded(FLOWS_DIR=str(tmp_path))


@pytest.mark.parametrize(
    ("points", "says"),
    [
        (None, "points.toml: [Errno 2]"),
        ("per_hour = 10\nbogus = 1\n", "unknown key"),
    ],
)
def test_a_flows_folder_with_bad_point_rules_is_refused(tmp_path, points, says):
    """Every check-out counts points: bad rules stop start-up, not a volunteer's OUT."""
    shutil.copytree(REPO_ROOT / "ivr_flows", tmp_path / "flows")
    target = tmp_path / "flows" / "points.toml"
    if points is None:
        target.unlink()
    else:
        target.write_text(points)
    with pytest.raises(SettingsError) as caught:
        loaded(FLOWS_DIR=str(tmp_path / "flows"))
    assert caught.value.message.startswith("CARECALL_FLOWS_DIR=")
    assert says in caught.value.message


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda t: t.replace("max_gap = 2", "max_gapp = 2", 1), "unknown key en.tuning.max_gapp"),
        (lambda t: t.replace("max_gap = 2", 'max_gap = "two"', 1), "a wrong value in [en]"),
        (lambda t: t.replace("[en.tuning]", "[en.tuning", 1), "not valid TOML"),
    ],
)
def test_a_flows_folder_with_bad_categories_is_refused(tmp_path, edit, says):
    """Every request is classified by them: a bad file stops start-up, not each job."""
    shutil.copytree(REPO_ROOT / "ivr_flows", tmp_path / "flows")
    target = tmp_path / "flows" / "categories.toml"
    target.write_text(edit(target.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        loaded(FLOWS_DIR=str(tmp_path / "flows"))
    assert caught.value.message.startswith("CARECALL_FLOWS_DIR=")
    assert "categories.toml" in caught.value.message
    assert says in caught.value.message


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("x" * 200_000 + "\tother\tnormal\t0", "field larger than field limit"),
        ("my tap drips\tplumbing\tnormal\t0", "unknown category 'plumbing'"),
    ],
)
def test_a_flows_folder_with_a_bad_example_is_refused(tmp_path, row, says):
    shutil.copytree(REPO_ROOT / "ivr_flows", tmp_path / "flows")
    with open(tmp_path / "flows" / "examples" / "en.tsv", "a", encoding="utf-8") as fh:
        fh.write(row + "\n")
    with pytest.raises(SettingsError) as caught:
        loaded(FLOWS_DIR=str(tmp_path / "flows"))
    assert caught.value.message.startswith("CARECALL_FLOWS_DIR=")
    assert "en.tsv" in caught.value.message and says in caught.value.message


def test_a_missing_flows_folder_stops_the_command_line_in_one_line(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CARECALL_DATABASE": str(tmp_path / "x.db"),
        "CARECALL_FLOWS_DIR": "/nonexistent",
    }
    flask = Path(sys.executable).with_name("flask")
    done = subprocess.run(
        [str(flask), "--app", "app", "settings"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "CARECALL_FLOWS_DIR='/nonexistent'" in done.stderr
    assert "Traceback" not in done.stderr
