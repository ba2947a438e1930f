"""Earshot's Wyoming port with several models, and its live admission, driven by the `wyoming`
package's own client (what Home Assistant uses).

Run by tests/wyoming.rs against a real `earshot serve --wyoming`:

    python3 tests/wyoming_models.py models HOST PORT EN_MONO16K_S16LE ZH_MONO16K_S16LE
    python3 tests/wyoming_models.py busy HOST PORT EN_MONO16K_S16LE

`models` (server: --models tiny.en,base-q5_1): `info` lists both models with their languages;
`transcribe` names the model and the language of the next audio; an unknown name or a language
the model cannot take is an `error` and the connection goes on. `busy` (server:
--live-capacity 0, so one live transcription at a time once one has been measured): an
`audio-start` beyond the live capacity gets `error` `busy` and the connection is closed; a
freed share serves again. Every check asserts here; the texts are printed as one JSON object on
the last line for the Rust side to score.
"""

import asyncio
import json
import sys

from wyoming.asr import Transcribe, Transcript, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

MODE, HOST, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
EN = open(sys.argv[4], "rb").read()
ZH = open(sys.argv[5], "rb").read() if len(sys.argv) > 5 else b""
# Longest wait for any one event: a hang fails the test instead of stalling it.
GUARD = 180
FMT = dict(rate=16000, width=2, channels=1)


def client():
    return AsyncTcpClient(HOST, PORT, connect_timeout=10, read_timeout=GUARD)


async def send_audio(c, pcm):
    for i in range(0, len(pcm), 3200):
        await c.write_event(AudioChunk(audio=pcm[i : i + 3200], **FMT).event())


async def read_transcript(c):
    """Events up to `transcript-stop`; returns the `transcript`."""
    transcript = None
    while True:
        event = await c.read_event()
        assert event is not None, "connection closed before the transcript"
        assert not Error.is_type(event.type), Error.from_event(event)
        if Transcript.is_type(event.type):
            transcript = Transcript.from_event(event)
        elif TranscriptStop.is_type(event.type):
            return transcript


async def utterance(c, pcm, **transcribe):
    await c.write_event(Transcribe(**transcribe).event())
    await c.write_event(AudioStart(**FMT).event())
    await send_audio(c, pcm)
    await c.write_event(AudioStop().event())
    return await read_transcript(c)


async def expect_error(c, code):
    event = await c.read_event()
    assert event is not None and Error.is_type(event.type), event
    error = Error.from_event(event)
    assert error.code == code, error
    return error


async def models():
    async with client() as c:
        await c.write_event(Describe().event())
        event = await c.read_event()
        assert event is not None and Info.is_type(event.type), event
        served = Info.from_event(event).asr[0].models
        assert [m.name for m in served] == ["tiny.en", "base-q5_1"], served
        assert served[0].languages == ["en"], served[0]
        assert {"en", "zh", "de"} <= set(served[1].languages), served[1]

        # Refusals name what is wrong; the connection serves on.
        await c.write_event(Transcribe(name="large-v9").event())
        error = await expect_error(c, "unknown-model")
        assert "tiny.en" in error.text and "base-q5_1" in error.text, error
        await c.write_event(Transcribe(name="tiny.en", language="zh").event())
        error = await expect_error(c, "unsupported-language")
        assert "tiny.en" in error.text, error

        zh = await utterance(c, ZH, name="base-q5_1", language="zh")
        assert zh.language == "zh", zh
        assert any("\u4e00" <= ch <= "\u9fff" for ch in zh.text), zh
        # No name: the default again (English only), whatever came before.
        en = await utterance(c, EN, language="en")
        assert en.language == "en", en
    return {"zh": zh.text, "en": en.text}


async def busy():
    async with client() as a:
        # One whole utterance measures what a live transcription costs.
        first = await utterance(a, EN, language="en")
        # A holds the live capacity with an open utterance …
        await a.write_event(Transcribe(language="en").event())
        await a.write_event(AudioStart(**FMT).event())
        # A's share is taken once the server answers `transcript-start`; only then may B ask
        # (otherwise the server could see B's audio-start first).
        event = await a.read_event()
        assert event is not None and TranscriptStart.is_type(event.type), event
        await send_audio(a, EN[: 16000 * 2])
        # … so B's is refused, and B is closed.
        async with client() as b:
            await b.write_event(Transcribe(language="en").event())
            await b.write_event(AudioStart(**FMT).event())
            error = await expect_error(b, "busy")
            assert "try again" in error.text, error
            assert await b.read_event() is None, "the refused connection is closed"
        await send_audio(a, EN[16000 * 2 :])
        await a.write_event(AudioStop().event())
        held = await read_transcript(a)
    # A's share is free again: the next connection is served.
    async with client() as c:
        again = await utterance(c, EN, language="en")
    return {"first": first.text, "held": held.text, "again": again.text}


print(json.dumps(asyncio.run({"models": models, "busy": busy}[MODE]())))
