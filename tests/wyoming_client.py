"""Earshot's Wyoming port driven by the `wyoming` package's own client (what Home Assistant uses).

Run by tests/wyoming.rs against a real `earshot serve --wyoming` (tiny.en, a short idle
timeout):

    python3 tests/wyoming_client.py HOST PORT MONO16K_S16LE STEREO44K_S16LE

MONO16K_S16LE and STEREO44K_S16LE are the same English recording as raw PCM: 16 kHz mono and
44.1 kHz stereo, 16-bit little-endian. Every protocol check asserts here; the recognised texts
are printed as one JSON object on the last line for the Rust side to score.
"""

import asyncio
import json
import sys

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info

HOST, PORT = sys.argv[1], int(sys.argv[2])
MONO = open(sys.argv[3], "rb").read()
STEREO = open(sys.argv[4], "rb").read()
# Longest wait for any one event: a hang fails the test instead of stalling it.
GUARD = 180


def client():
    return AsyncTcpClient(HOST, PORT, connect_timeout=10, read_timeout=GUARD)


def pieces(pcm, frame_bytes, frames):
    step = frame_bytes * frames
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def describe():
    async with client() as c:
        await c.write_event(Describe().event())
        event = await c.read_event()
    assert event is not None and Info.is_type(event.type), event
    info = Info.from_event(event)
    assert len(info.asr) == 1, info
    asr = info.asr[0]
    assert asr.name == "earshot" and asr.installed, asr
    assert asr.supports_transcript_streaming is True, asr
    assert asr.version and asr.description, asr
    assert len(asr.models) == 1, asr.models
    model = asr.models[0]
    assert model.name == "tiny.en" and model.installed, model
    assert model.languages == ["en"], model.languages
    assert model.attribution.name and model.attribution.url, model.attribution
    return model.name


async def transcribe_like_home_assistant():
    """Home Assistant's stt.py: everything sent at once, then events read up to `transcript`."""
    async with client() as c:
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for piece in pieces(MONO, 2, 1024):
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=piece).event())
        await c.write_event(AudioStop().event())
        while True:
            event = await c.read_event()
            assert event is not None, "connection closed before the transcript"
            assert not Error.is_type(event.type), event
            if Transcript.is_type(event.type):
                transcript = Transcript.from_event(event)
                assert transcript.language == "en", transcript
                break
        # The stream ends, and the connection serves on (the idle timeout counts afresh).
        event = await c.read_event()
        assert event is not None and TranscriptStop.is_type(event.type), event
        await c.write_event(Describe().event())
        event = await c.read_event()
        assert event is not None and Info.is_type(event.type), event
        return transcript.text


async def transcribe_streaming():
    """A microphone: 44.1 kHz stereo in 100 ms chunks at real time, events read meanwhile.

    The microphone keeps sending (silence after the speech) until the first transcript chunk
    arrives, so chunks are shown to come while the audio is still open; then audio-stop.
    """
    fmt = dict(rate=44100, width=2, channels=2)
    async with client() as c:
        await c.write_event(Transcribe().event())
        await c.write_event(AudioStart(**fmt).event())
        first_chunk = asyncio.Event()
        stopped = asyncio.Event()
        kinds, chunks, chunks_before_stop = [], [], 0
        final = None

        async def read():
            nonlocal final, chunks_before_stop
            while True:
                event = await c.read_event()
                assert event is not None, f"connection closed after {kinds}"
                assert not Error.is_type(event.type), event
                kinds.append(event.type)
                if TranscriptChunk.is_type(event.type):
                    chunks.append(TranscriptChunk.from_event(event).text)
                    if not stopped.is_set():
                        chunks_before_stop += 1
                    first_chunk.set()
                elif Transcript.is_type(event.type):
                    final = Transcript.from_event(event)
                elif TranscriptStop.is_type(event.type):
                    return

        reader = asyncio.create_task(read())
        for piece in pieces(STEREO, 4, 4410):
            await c.write_event(AudioChunk(audio=piece, **fmt).event())
            await asyncio.sleep(0.1)
        silence = bytes(4 * 4410)
        for _ in range(int(GUARD / 0.1)):
            if first_chunk.is_set() or reader.done():
                break
            await c.write_event(AudioChunk(audio=silence, **fmt).event())
            await asyncio.sleep(0.1)
        assert first_chunk.is_set(), f"no transcript-chunk while audio was open: {kinds}"
        stopped.set()
        await c.write_event(AudioStop().event())
        await asyncio.wait_for(reader, GUARD)

    assert TranscriptStart.is_type(kinds[0]), kinds
    assert kinds[-2:] == ["transcript", "transcript-stop"], kinds
    assert set(kinds[1:-2]) == {"transcript-chunk"}, kinds
    assert chunks_before_stop >= 1, kinds
    # Chunks only append: together they are the final transcript.
    assert "".join(chunks) == final.text, (chunks, final.text)
    return final.text


# ---- bad input, on raw sockets ---------------------------------------------------------


async def raw(send, until=None):
    """Sends raw bytes; returns the events the server wrote until it closed the connection
    (or, with `until`, once that many came)."""
    reader, writer = await asyncio.open_connection(HOST, PORT)
    try:
        await send(writer)
        events = []
        while True:
            event = await asyncio.wait_for(async_read_event(reader), GUARD)
            if event is None:
                return events
            events.append(event)
            if len(events) == until:
                return events
    finally:
        writer.close()


def header(kind, data=None, payload_length=None):
    h = {"type": kind, "version": "1.10.2"}
    if data is not None:
        h["data"] = data
    if payload_length is not None:
        h["payload_length"] = payload_length
    return (json.dumps(h) + "\n").encode()


def error_codes(events):
    return [Error.from_event(e).code for e in events if Error.is_type(e.type)]


MONO16 = {"rate": 16000, "width": 2, "channels": 1}


async def malformed_header():
    async def send(w):
        w.write(b"this is not a wyoming header\n")
        await w.drain()

    assert error_codes(await raw(send)) == ["malformed-event"]


async def payload_longer_than_announced():
    async def send(w):
        w.write(header("audio-start", MONO16))
        w.write(header("audio-chunk", MONO16, payload_length=4) + b"\0\0\0\0" + b"\x01\x02 extra")
        await w.drain()

    events = await raw(send)
    assert [e.type for e in events] == ["transcript-start", "error"], events
    assert error_codes(events) == ["malformed-event"], events


async def payload_over_the_cap():
    """Refused from the header alone: the gigabyte is never sent."""

    async def send(w):
        w.write(header("audio-chunk", MONO16, payload_length=10**9))
        await w.drain()

    assert error_codes(await raw(send)) == ["too-large"]


async def unannounced_format():
    async def send(w):
        w.write(header("audio-start", MONO16))
        w.write(header("audio-chunk", {"rate": 8000, "width": 2, "channels": 1}, 4) + bytes(4))
        await w.drain()

    assert error_codes(await raw(send)) == ["unannounced-format"]


async def chunk_before_start():
    async def send(w):
        w.write(header("audio-chunk", MONO16, 4) + bytes(4))
        await w.drain()

    assert error_codes(await raw(send)) == ["no-audio-start"]


async def unsupported_width():
    async def send(w):
        w.write(header("audio-start", {"rate": 16000, "width": 3, "channels": 1}))
        await w.drain()

    assert error_codes(await raw(send)) == ["unsupported-audio"]


async def unknown_event_then_describe():
    """An unknown event is answered with an error; the connection goes on."""

    async def send(w):
        w.write(header("synthesize", {"text": "hello"}))
        w.write(header("describe"))
        await w.drain()

    events = await raw(send, until=2)
    assert error_codes(events) == ["unknown-event"], events
    assert Info.is_type(events[1].type), events


async def silent_client_is_closed():
    """Connects and says nothing: the idle timeout closes it (after a `timeout` error)."""

    async def send(w):
        pass

    assert error_codes(await raw(send)) == ["timeout"]


async def bad_input_while_another_client_is_served():
    served = asyncio.create_task(transcribe_like_home_assistant())
    for check in [
        malformed_header,
        payload_longer_than_announced,
        payload_over_the_cap,
        unannounced_format,
        chunk_before_start,
        unsupported_width,
        unknown_event_then_describe,
        silent_client_is_closed,
    ]:
        try:
            await check()
        except AssertionError as e:
            raise AssertionError(f"{check.__name__}: {e}") from e
    return await served


async def main():
    texts = {"model": await describe()}
    texts["batch"] = await transcribe_like_home_assistant()
    texts["streaming"] = await transcribe_streaming()
    texts["beside_bad_input"] = await bad_input_while_another_client_is_served()
    print(json.dumps(texts))


asyncio.run(main())
