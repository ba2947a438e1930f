"""Earshot's OpenAI Realtime transcription endpoint driven by the official `openai` SDK.

Run by tests/realtime_sdk.rs against a real server (tiny.en, API key required):

    python3 tests/realtime_sdk.py URL KEY CORPUS_DIR [turns|models|busy|music]

`turns` (the default): keys, bad input, a committed turn, server VAD. `models` (a server serving
tiny.en and base-q5_1): `session.update` chooses the model, an unknown one is an `error` naming
the served ones. `busy` (a server whose live capacity takes one session once one is measured):
a session's first audio beyond the capacity gets an `error` `server_busy` and the close.
`music` (the server's Silero model in use): server VAD's turns cover a speech between music,
not the music.

Every protocol check asserts here; the transcripts are printed as one JSON object on the last
line so the Rust side can score them against the corpus references.
"""

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import websockets

URL, KEY, CORPUS = sys.argv[1], sys.argv[2], Path(sys.argv[3])
MODE = sys.argv[4] if len(sys.argv) > 4 else "turns"
WS_URL = URL.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
# Generous per-event wait: the CPU may be shared; a hang still fails instead of blocking.
WAIT = 120
PIECE = 4800  # bytes of 24 kHz PCM16: 100 ms


def pcm24(name):
    """The corpus file as 24 kHz mono PCM16 LE, as OpenAI's audio/pcm expects."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(CORPUS / name), "-f", "s16le", "-ac", "1", "-ar", "24000", "-"],
        check=True,
        capture_output=True,
    )
    return out.stdout


def b64(data):
    return base64.b64encode(data).decode()


def connect(key=KEY):
    client = openai.AsyncOpenAI(base_url=f"{URL}/v1", api_key=key, max_retries=0)
    return client.realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"})


async def recv(conn):
    return await asyncio.wait_for(conn.recv(), WAIT)


async def expect(conn, type_):
    event = await recv(conn)
    assert event.type == type_, (type_, event)
    return event


async def expect_error(conn, code, event_id=None):
    event = await expect(conn, "error")
    assert event.error.type == "invalid_request_error", event
    assert event.error.code == code, (code, event)
    assert event.error.event_id == event_id, (event_id, event)
    assert event.error.message, event
    return event


def session(turn_detection, model="gpt-4o-transcribe", language="en"):
    return {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": model, "language": language},
                "turn_detection": turn_detection,
            }
        },
    }


async def wrong_keys_are_refused():
    try:
        async with connect("wrong-key") as conn:
            await recv(conn)
    except Exception as e:  # the SDK surfaces the refused handshake as an exception
        assert "401" in repr(e) or "401" in str(getattr(e, "response", "")), repr(e)
    else:
        raise AssertionError("a wrong key was accepted")
    # Browsers cannot set headers: the key travels as a subprotocol, and `realtime` is echoed.
    protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]
    async with websockets.connect(WS_URL, subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime", ws.subprotocol
        first = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert first["type"] == "session.created", first
        assert first["session"]["type"] == "transcription", first
    try:
        async with websockets.connect(WS_URL, subprotocols=["realtime", "openai-insecure-api-key.nope"]):
            raise AssertionError("a wrong subprotocol key was accepted")
    except websockets.exceptions.InvalidStatus as e:
        assert e.response.status_code == 401, e


async def bad_input_then_a_committed_turn():
    """Every kind of bad input is an `error` naming the event; the session then still works.
    With turn detection off, only `commit` ends the turn."""
    async with connect() as conn:
        created = await expect(conn, "session.created")
        assert created.session.type == "transcription"
        await conn.session.update(session=session(None))
        updated = await expect(conn, "session.updated")
        assert updated.session.audio.input.turn_detection is None, updated

        await conn.send_raw("{not json")
        await expect_error(conn, "invalid_json")
        await conn.send_raw(json.dumps({"type": "response.create", "event_id": "e-type"}))
        err = await expect_error(conn, "invalid_value", "e-type")
        assert err.error.param == "type", err
        await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "e-b64"}))
        await expect_error(conn, "invalid_value", "e-b64")
        await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": 12, "event_id": "e-int"}))
        await expect_error(conn, "invalid_type", "e-int")
        await conn.send_raw(b"\x00\x01binary")
        await expect_error(conn, "invalid_type")
        bad_rate = session(None)
        bad_rate["audio"]["input"]["format"]["rate"] = 16000
        await conn.session.update(session=bad_rate, event_id="e-rate")
        err = await expect_error(conn, "invalid_value", "e-rate")
        assert err.error.param == "session.audio.input.format.rate", err
        await conn.input_audio_buffer.commit(event_id="e-empty")
        await expect_error(conn, "input_audio_buffer_commit_empty", "e-empty")
        await conn.input_audio_buffer.append(audio=b64(bytes(61 * 48000)), event_id="e-big")
        await expect_error(conn, "input_audio_buffer_append_too_large", "e-big")
        # Speech is what the buffer must keep (sound that is not speech is not kept): 44 s
        # fit, 88 s do not, even after a hypothesis or two has committed a window's words.
        speech = pcm24("en_jfk.wav") * 4
        await conn.input_audio_buffer.append(audio=b64(speech))
        await conn.input_audio_buffer.append(audio=b64(speech), event_id="e-full")
        full = await recv(conn)
        while full.type == "conversation.item.input_audio_transcription.delta":
            full = await recv(conn)  # the first 44 s are being transcribed meanwhile
        assert full.type == "error" and full.error.code == "input_audio_buffer_full", full
        assert full.error.event_id == "e-full", full
        await conn.input_audio_buffer.clear(event_id="e-clear")
        cleared = await recv(conn)
        while cleared.type == "conversation.item.input_audio_transcription.delta":
            cleared = await recv(conn)  # the speech's hypothesis may have been under way
        assert cleared.type == "input_audio_buffer.cleared", cleared

        audio = pcm24("en_harvard_birch_canoe.wav")
        for i in range(0, len(audio), PIECE):
            await conn.input_audio_buffer.append(audio=b64(audio[i : i + PIECE]))
        await conn.input_audio_buffer.commit(event_id="c1")
        deltas, committed = [], None
        while True:
            event = await recv(conn)
            assert not event.type.startswith("input_audio_buffer.speech_"), event
            if event.type == "input_audio_buffer.committed":
                committed = event
            elif event.type == "conversation.item.input_audio_transcription.delta":
                deltas.append(event)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                break
            else:
                raise AssertionError(event)
        assert committed is not None and committed.item_id == event.item_id, (committed, event)
        assert committed.previous_item_id is None, committed
        assert all(d.item_id == event.item_id for d in deltas), deltas
        assert "".join(d.delta for d in deltas) == event.transcript, (deltas, event)
        assert event.content_index == 0 and event.usage.type == "duration", event
        assert 2.5 < event.usage.seconds < 5, event.usage
        return event.transcript


async def server_vad_at_real_time():
    """A recording appended in 100 ms pieces at real time: the server finds the turns, and
    each item's text arrives as deltas before its completion."""
    audio = pcm24("en_jfk.wav") + bytes(2 * 24000 * 3 // 2)  # 1.5 s of silence ends the last turn
    async with connect() as conn:
        await expect(conn, "session.created")
        vad = {"type": "server_vad", "silence_duration_ms": 500}
        await conn.session.update(session=session(vad))
        updated = await expect(conn, "session.updated")
        assert updated.session.audio.input.turn_detection.type == "server_vad", updated

        events = []
        sending = True
        deltas_while_sending = 0

        async def read():
            nonlocal deltas_while_sending
            while True:
                event = await recv(conn)
                events.append(event)
                note = getattr(event, "delta", None) or getattr(event, "transcript", "")
                print(f"{time.monotonic() - start:6.2f} {event.type} {note}", file=sys.stderr)
                if sending and event.type.endswith("transcription.delta"):
                    deltas_while_sending += 1

        start = time.monotonic()
        reader = asyncio.create_task(read())
        for n, i in enumerate(range(0, len(audio), PIECE)):
            await asyncio.sleep(max(0.0, start + n * 0.1 - time.monotonic()))
            await conn.input_audio_buffer.append(audio=b64(audio[i : i + PIECE]))
        sending = False
        print(f"{time.monotonic() - start:6.2f} all audio sent", file=sys.stderr)

        def settled():
            kinds = [e.type for e in events]
            stopped = kinds.count("input_audio_buffer.speech_stopped")
            done = kinds.count("conversation.item.input_audio_transcription.completed")
            return stopped >= 1 and done == kinds.count("input_audio_buffer.committed")

        deadline = time.monotonic() + WAIT
        while not settled():
            assert not reader.done(), reader.exception()
            assert time.monotonic() < deadline, [e.type for e in events]
            await asyncio.sleep(0.1)
        reader.cancel()

    by_item = {}
    previous = None
    for e in events:
        if e.type == "error":
            raise AssertionError(e)
        by_item.setdefault(getattr(e, "item_id", None), []).append(e)
        if e.type == "input_audio_buffer.committed":
            assert e.previous_item_id == previous, (e, previous)
        if e.type == "conversation.item.input_audio_transcription.completed":
            previous = e.item_id
    transcripts = []
    for item_id, item in by_item.items():
        kinds = [e.type.rsplit(".", 1)[-1] for e in item if not e.type.endswith("delta")]
        assert kinds == ["speech_started", "speech_stopped", "committed", "completed"], (item_id, kinds)
        first = {}
        for e in item:
            first.setdefault(e.type.rsplit(".", 1)[-1], e)
        started, stopped, completed = first["speech_started"], first["speech_stopped"], item[-1]
        assert started.audio_start_ms < stopped.audio_end_ms, (started, stopped)
        deltas = "".join(e.delta for e in item if e.type.endswith("delta"))
        assert deltas == completed.transcript, (deltas, completed)
        transcripts.append(completed.transcript)
    # Deltas come before their item's completion; how many arrive while audio is still being
    # sent depends on how busy the CPU is, so that is reported, not asserted.
    assert any(e.type.endswith("delta") for e in events), "no delta at all"
    print(f"deltas while audio was being sent: {deltas_while_sending}", file=sys.stderr)
    return " ".join(t for t in transcripts if t)


async def committed_turn(conn, audio):
    """Appends `audio` and commits it; returns the item's transcript (no error on the way)."""
    for i in range(0, len(audio), PIECE):
        await conn.input_audio_buffer.append(audio=b64(audio[i : i + PIECE]))
    await conn.input_audio_buffer.commit()
    while True:
        event = await recv(conn)
        assert event.type != "error", event
        if event.type == "conversation.item.input_audio_transcription.completed":
            return event.transcript


def has_han(text):
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


async def models_are_chosen_per_session():
    zh_audio = pcm24("zh_BAC009S0764W0121.wav")
    async with connect() as conn:
        await expect(conn, "session.created")
        await conn.session.update(session=session(None, model="large-v9"), event_id="e-model")
        err = await expect_error(conn, "invalid_value", "e-model")
        assert err.error.param == "session.audio.input.transcription.model", err
        assert "tiny.en" in err.error.message and "base-q5_1" in err.error.message, err
        # An English-only model cannot take Mandarin.
        await conn.session.update(session=session(None, model="tiny.en", language="zh"), event_id="e-zh")
        err = await expect_error(conn, "invalid_value", "e-zh")
        assert err.error.param == "session.audio.input.transcription.language", err

        await conn.session.update(session=session(None, model="base-q5_1", language="zh"))
        updated = await expect(conn, "session.updated")
        assert updated.session.audio.input.transcription.model == "base-q5_1", updated
        zh = await committed_turn(conn, zh_audio)
        assert has_han(zh), zh
        # OpenAI's names mean the default model (tiny.en: English only) from the next audio on.
        await conn.session.update(session=session(None, language="en"))
        await expect(conn, "session.updated")
        en = await committed_turn(conn, pcm24("en_harvard_birch_canoe.wav"))
    return {"zh": zh, "en": en}


async def server_vad_hears_speech_not_music():
    """Music, a speech, more music, appended at real time: server VAD's turns must start within
    the speech and end while the music after it still plays (the music is loud: a level
    detector would take it all for speech)."""
    music = pcm24("music_rodio_music.opus")[: 2 * 24000 * 3]
    speech = pcm24("en_jfk.wav")
    audio = music + speech + music + bytes(2 * 24000 * 3 // 2)
    speech_ms = (len(music) // 48, (len(music) + len(speech)) // 48)
    turns, texts = [], []
    async with connect() as conn:
        await expect(conn, "session.created")
        vad = {"type": "server_vad", "silence_duration_ms": 500}
        await conn.session.update(session=session(vad))
        await expect(conn, "session.updated")

        async def read():
            while True:
                event = await recv(conn)
                assert event.type != "error", event
                if event.type == "input_audio_buffer.speech_started":
                    turns.append([event.audio_start_ms, None])
                elif event.type == "input_audio_buffer.speech_stopped":
                    turns[-1][1] = event.audio_end_ms
                elif event.type == "conversation.item.input_audio_transcription.completed":
                    texts.append(event.transcript)

        reader = asyncio.create_task(read())
        start = time.monotonic()
        for n, i in enumerate(range(0, len(audio), PIECE)):
            await asyncio.sleep(max(0.0, start + n * 0.1 - time.monotonic()))
            await conn.input_audio_buffer.append(audio=b64(audio[i : i + PIECE]))
        deadline = time.monotonic() + WAIT
        while not (turns and len(texts) == len(turns) and turns[-1][1] is not None):
            assert not reader.done(), reader.exception()
            assert time.monotonic() < deadline, (turns, texts)
            await asyncio.sleep(0.1)
        reader.cancel()
    print(f"speech at {speech_ms} ms; turns {turns}", file=sys.stderr)
    lead_in_ms = 500
    for begin, end in turns:
        assert speech_ms[0] - lead_in_ms <= begin < speech_ms[1], ("a turn starts in the music", turns, speech_ms)
    assert turns[-1][1] < speech_ms[1] + 2000, ("the last turn runs on into the music", turns, speech_ms)
    return " ".join(t for t in texts if t)


async def sessions_beyond_the_live_capacity_are_refused():
    audio = pcm24("en_harvard_birch_canoe.wav")
    async with connect() as held:
        await expect(held, "session.created")
        await held.session.update(session=session(None))
        await expect(held, "session.updated")
        first = await committed_turn(held, audio)  # measured: a live session's cost is known
        async with connect() as refused:
            await expect(refused, "session.created")
            await refused.input_audio_buffer.append(audio=b64(audio[:PIECE]), event_id="e-busy")
            event = await expect(refused, "error")
            assert event.error.type == "server_error", event
            assert event.error.code == "server_busy", event
            assert event.error.event_id == "e-busy", event
            try:
                await recv(refused)
            except websockets.exceptions.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1008, closed
            else:
                raise AssertionError("the refused session stays open")
    # The held session is gone, and its share with it: a new session is served.
    async with connect() as again:
        await expect(again, "session.created")
        await again.session.update(session=session(None))
        await expect(again, "session.updated")
        second = await committed_turn(again, audio)
    return {"first": first, "second": second}


async def main():
    if MODE == "models":
        print(json.dumps(await models_are_chosen_per_session()))
        return
    if MODE == "busy":
        print(json.dumps(await sessions_beyond_the_live_capacity_are_refused()))
        return
    if MODE == "music":
        print(json.dumps({"speech": await server_vad_hears_speech_not_music()}))
        return
    await wrong_keys_are_refused()
    committed = await bad_input_then_a_committed_turn()
    vad = await server_vad_at_real_time()
    print(json.dumps({"commit": committed, "vad": vad}))


asyncio.run(main())
