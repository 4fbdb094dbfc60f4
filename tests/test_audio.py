"""Decoding caller audio: every format we accept, and every kind of bad input, by name."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.speech import (
    AudioError,
    AudioTooLong,
    CorruptAudio,
    EmptyAudio,
    NotAudio,
    SilentAudio,
    audio_from_samples,
    load_audio,
)
from tests.speechgen import encode, render, require_encoder, telephone, write_wav

SENTENCE = "Could someone help me carry my groceries on Tuesday?"


@pytest.fixture(scope="module")
def speech():
    """Return a rendered English sentence as 16 kHz samples."""
    return load_audio(render(SENTENCE)).samples


def test_wav_pcm_16k_decodes_to_float_mono(speech):
    audio = load_audio(render(SENTENCE))
    assert audio.sample_rate == 16000
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert 0.05 < float(np.max(np.abs(audio.samples))) <= 1.0
    assert audio.duration_s == pytest.approx(len(speech) / 16000)
    assert len(audio.pcm16()) == 2 * len(audio.samples)


def test_telephone_mulaw_8k_is_resampled_to_16k(speech):
    audio = load_audio(telephone(SENTENCE))
    assert audio.sample_rate == 16000
    assert audio.duration_s == pytest.approx(len(speech) / 16000, abs=0.01)


def test_path_bytes_and_file_object_decode_the_same():
    path = render(SENTENCE)
    data = path.read_bytes()
    from_path = load_audio(path).samples
    assert np.array_equal(load_audio(str(path)).samples, from_path)
    assert np.array_equal(load_audio(data).samples, from_path)
    assert np.array_equal(load_audio(io.BytesIO(data)).samples, from_path)


def test_samples_are_read_only():
    audio = load_audio(render(SENTENCE))
    with pytest.raises(ValueError):
        audio.samples[0] = 1.0


@pytest.mark.parametrize(
    ("name", "codec", "container", "rate", "video"),
    [
        ("kiosk.webm", "libopus", "webm", 48000, False),
        ("kiosk-video.webm", "libopus", "webm", 48000, True),
        ("voice.ogg", "libopus", "ogg", 48000, False),
        ("voice.mp3", "libmp3lame", "mp3", 16000, False),
        ("voice.m4a", "aac", "mp4", 16000, False),
        ("video.mp4", "aac", "mp4", 16000, True),
        ("phone.wav", "pcm_mulaw", "wav", 8000, False),
    ],
)
def test_encoded_formats_decode(tmp_path, speech, name, codec, container, rate, video):
    require_encoder(codec)
    source = load_audio(render(SENTENCE), sample_rate=rate).samples
    path = encode(
        source, tmp_path / name, sample_rate=rate, codec=codec, container=container, video=video
    )
    audio = load_audio(path)
    # Encoders add a little priming/padding (AAC ~0.07 s); the speech itself must survive.
    assert audio.duration_s == pytest.approx(len(speech) / 16000, abs=0.15)
    assert float(np.sqrt(np.mean(audio.samples**2))) > 0.01


def _silence(seconds, rate=16000):
    return np.zeros(int(seconds * rate), dtype=np.float32)


BAD_INPUTS = [
    ("empty bytes", lambda tmp, s: b"", EmptyAudio),
    ("empty file", lambda tmp, s: _write(tmp / "empty.wav", b""), EmptyAudio),
    ("empty file object", lambda tmp, s: io.BytesIO(), EmptyAudio),
    ("0.05 s of speech", lambda tmp, s: write_wav(s[:800], tmp / "short.wav"), EmptyAudio),
    ("3 s digital silence", lambda tmp, s: write_wav(_silence(3), tmp / "zero.wav"), SilentAudio),
    (
        "3 s mu-law silence",
        lambda tmp, s: write_wav(
            _silence(3, 8000), tmp / "z.wav", sample_rate=8000, codec="pcm_mulaw"
        ),
        SilentAudio,
    ),
    ("random bytes", lambda tmp, s: np.random.default_rng(7).bytes(40_000), NotAudio),
    (
        "text file",
        lambda tmp, s: _write(tmp / "note.wav", b"Please call me back.\n" * 50),
        NotAudio,
    ),
    ("truncated WAV header", lambda tmp, s: render(SENTENCE).read_bytes()[:30], CorruptAudio),
    ("RIFF header only", lambda tmp, s: render(SENTENCE).read_bytes()[:44], CorruptAudio),
    ("video without audio", lambda tmp, s: _video_only(tmp / "silent-film.mp4"), NotAudio),
]


def _write(path, data):
    path.write_bytes(data)
    return path


def _video_only(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(("case", "make", "error"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_audio_raises_named_error(tmp_path, speech, case, make, error):
    with pytest.raises(error) as raised:
        load_audio(make(tmp_path, speech))
    assert isinstance(raised.value, AudioError)
    assert str(raised.value)


def test_truncated_wav_keeps_what_decodes():
    data = render(SENTENCE).read_bytes()
    audio = load_audio(data[: len(data) // 2])
    assert audio.duration_s == pytest.approx(len(data) / 2 / 2 / 16000, abs=0.05)


def test_truncated_mp3_keeps_what_decodes(tmp_path, speech):
    require_encoder("libmp3lame")
    data = encode(
        speech, tmp_path / "a.mp3", sample_rate=16000, codec="libmp3lame", container="mp3"
    ).read_bytes()
    assert load_audio(data[: len(data) // 2]).duration_s > 1.0


def test_quiet_speech_is_not_silent(speech):
    # A soft-spoken caller on a bad line: about 26 dB below full scale.
    audio = audio_from_samples(speech * 0.05)
    assert audio.duration_s > 1.0


def test_over_long_audio_is_refused_while_decoding(tmp_path, speech):
    path = write_wav(np.tile(speech, 2), tmp_path / "long.wav")
    with pytest.raises(AudioTooLong, match="limit is 2 s"):
        load_audio(path, max_seconds=2)


def test_three_hour_recording_is_refused_without_decoding_it(tmp_path):
    # A real 3 h 8 kHz mu-law WAV (86 MB), written as a sparse file so it costs no time.
    path = write_wav(
        _silence(1, 8000) + 0.1, tmp_path / "three-hours.wav", sample_rate=8000, codec="pcm_mulaw"
    )
    header = bytearray(path.read_bytes())
    data_at = header.find(b"data")
    data_size = 3 * 3600 * 8000
    header[data_at + 4 : data_at + 8] = data_size.to_bytes(4, "little")
    header[4:8] = (data_size + data_at).to_bytes(4, "little")
    with open(path, "r+b") as f:
        f.write(bytes(header[: data_at + 8]))
        f.truncate(data_at + 8 + data_size)
    started = time.perf_counter()
    with pytest.raises(AudioTooLong, match="10800.0 s"):
        load_audio(path)
    assert time.perf_counter() - started < 1.0


@settings(max_examples=150, deadline=2000)
@given(st.binary(max_size=4096))
def test_any_bytes_give_audio_or_a_named_error(data):
    try:
        audio = load_audio(data)
    except AudioError:
        return
    assert audio.samples.dtype == np.float32


@settings(max_examples=60, deadline=2000)
@given(cut=st.integers(min_value=0, max_value=20_000))
def test_any_truncation_of_a_wav_gives_audio_or_a_named_error(cut):
    data = render(SENTENCE).read_bytes()
    try:
        audio = load_audio(data[:cut])
    except AudioError:
        return
    assert audio.duration_s >= 0.2
