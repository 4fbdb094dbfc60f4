"""Named errors raised by the speech package; edges translate them for callers."""


class SpeechError(Exception):
    """Base class for every error raised by app.speech."""


class ModelUnavailable(SpeechError):
    """A configured speech model cannot be loaded: missing, damaged or unreadable."""


class ModelNotInstalled(ModelUnavailable):
    """A speech model is needed but not installed in the models directory."""


class UnknownModel(SpeechError):
    """A model name is not listed in the speech model manifest."""


class ManifestError(SpeechError):
    """The speech model manifest is malformed."""


class InstallError(SpeechError):
    """Installing a speech model failed; nothing was left half-installed."""


class DigestMismatch(InstallError):
    """A downloaded file's size or sha256 differs from the expected one."""


class DigestUnknown(InstallError):
    """A download has no recorded sha256 and the operator supplied none."""


class UnsupportedLanguage(SpeechError):
    """No engine is configured, or able, to handle the requested language."""


class NoGrammarModel(SpeechError):
    """No grammar-capable (Vosk) model is configured for the language."""


class PhraseNotInVocabulary(SpeechError):
    """A grammar phrase contains a word the Vosk model cannot recognise."""


class AudioError(SpeechError):
    """Base class for audio that cannot be turned into speech samples."""


class NotAudio(AudioError):
    """The input is not a decodable audio file or has no audio stream."""


class CorruptAudio(AudioError):
    """The input looks like audio but is damaged and too little of it decodes."""


class EmptyAudio(AudioError):
    """The audio holds no samples, or is too short to contain a word."""


class SilentAudio(AudioError):
    """The audio is (near) digital silence, so there is nothing to transcribe."""


class AudioTooLong(AudioError):
    """The audio is longer than the caller allows."""
