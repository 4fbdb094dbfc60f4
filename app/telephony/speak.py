"""TwiML for a caller: slow, clear prompts, one-key menus, and recordings."""

from dataclasses import dataclass

from twilio.twiml.voice_response import Dial, Gather, Record, Say, VoiceResponse

from ..flows import Flow


@dataclass(frozen=True)
class Speaker:
    """Says a flow's words in its voice, at the caller's pace."""

    flow: Flow
    pace: str = "normal"

    def say(self, text):
        """Return a <Say> of text with the caller's prosody rate."""
        say = Say(voice=self.flow.voice, language=self.flow.say_language)
        say.prosody(words=text, rate=self.flow.rate(self.pace))
        return say

    def prompt(self, key, **values):
        """Return a <Say> of one of the flow's prompts."""
        return self.say(self.flow.prompt(key, **values))


def menu(speaker, texts, action, *, timeout):
    """Ask a one-key question; silence is posted to action too, so it can be asked again."""
    response = VoiceResponse()
    gather = Gather(
        input="dtmf",
        num_digits=1,
        timeout=timeout,
        finish_on_key="",
        action=action,
        method="POST",
        action_on_empty_result=True,
    )
    for text in texts:
        gather.append(speaker.say(text))
    response.append(gather)
    # Where actionOnEmptyResult is not honoured, TwiML falls through to here: silence too.
    response.redirect(action, method="POST")
    return response


def record(speaker, texts, action, *, status_callback, silence_seconds, max_seconds, after):
    """Ask for a spoken message after a tone; without one the call moves on to after."""
    response = VoiceResponse()
    for text in texts:
        response.append(speaker.say(text))
    response.append(
        Record(
            action=action,
            method="POST",
            timeout=silence_seconds,
            max_length=max_seconds,
            finish_on_key="#",
            play_beep=True,
            recording_status_callback=status_callback,
            recording_status_callback_method="POST",
        )
    )
    response.redirect(after, method="POST")
    return response


def hold(speaker, texts, redirect, *, pause_seconds):
    """Say a holding message (or nothing), pause briefly, then come back to redirect."""
    response = VoiceResponse()
    for text in texts:
        response.append(speaker.say(text))
    response.pause(length=pause_seconds)
    response.redirect(redirect, method="POST")
    return response


def goodbye(speaker, texts):
    """Say the last words and end the call."""
    response = VoiceResponse()
    for text in texts:
        response.append(speaker.say(text))
    response.hangup()
    return response


def connect(speaker, texts, number, action, *, timeout=30):
    """Say a few words and dial a person; action hears whether they answered."""
    response = VoiceResponse()
    for text in texts:
        response.append(speaker.say(text))
    dial = Dial(action=action, method="POST", timeout=timeout)
    dial.number(number)
    response.append(dial)
    return response


def redirect(url):
    """Send the call straight on to another step."""
    response = VoiceResponse()
    response.redirect(url, method="POST")
    return response
