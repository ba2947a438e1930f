"""Earshot's OpenAI-compatible API driven by the official `openai` Python SDK.

Run by tests/openai_sdk.rs against two real servers:

    python3 tests/openai_sdk.py EN_URL EN_KEY MULTI_URL CORPUS_DIR

EN_URL serves the English-only tiny.en model and requires EN_KEY; MULTI_URL serves a
multilingual model without a key. Every check asserts here; the recognised texts are printed
as one JSON object on the last line so the Rust side can score them against the references.
"""

import json
import sys
from pathlib import Path

import openai

EN_URL, EN_KEY, MULTI_URL, CORPUS = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])


def client(url, key):
    # No retries: a wrong answer must surface at once, not after back-off.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)


def audio(name):
    return open(CORPUS / name, "rb")


en = client(EN_URL, EN_KEY)
multi = client(MULTI_URL, "unused")
texts = {}

# Every response format on the English recording.
with audio("en_jfk.wav") as f:
    texts["json"] = en.audio.transcriptions.create(model="whisper-1", file=f).text
for fmt in ["text", "srt", "vtt"]:
    with audio("en_jfk.wav") as f:
        out = en.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    assert isinstance(out, str), (fmt, type(out))
    texts[fmt] = out
assert texts["srt"].startswith("1\n00:00:"), texts["srt"]
assert texts["vtt"].startswith("WEBVTT"), texts["vtt"]

# stream=True: the SDK iterates over deltas as the text is produced, then one done event; the
# deltas add up to the done event's text, which is the plain request's text for the same file.
with audio("en_jfk.wav") as f:
    raw = en.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f, stream=True)
assert raw.headers.get("content-type") == "text/event-stream", raw.headers
assert len(raw.headers.get("x-earshot-task-id", "")) == 36, raw.headers
events = list(raw.parse())
kinds = [e.type for e in events]
assert len(kinds) >= 2 and kinds[-1] == "transcript.text.done", kinds
assert set(kinds[:-1]) == {"transcript.text.delta"}, kinds
assert isinstance(events[0], openai.types.audio.TranscriptionTextDeltaEvent), type(events[0])
assert isinstance(events[-1], openai.types.audio.TranscriptionTextDoneEvent), type(events[-1])
deltas = "".join(e.delta for e in events[:-1])
assert deltas == events[-1].text == texts["json"], (deltas, events[-1].text, texts["json"])
texts["stream"] = deltas

# An error before the first event is the SDK's typed exception, raised by `create` itself.
try:
    en.audio.transcriptions.create(
        model="whisper-1", file=("notes.wav", b"meeting notes, not audio " * 200), stream=True
    )
    raise AssertionError("a non-audio file was accepted for streaming")
except openai.APIStatusError as e:
    assert e.status_code == 415 and e.code == "unsupported_audio", (e.status_code, e.code)
try:
    with audio("en_arctic_a0024.wav") as f:
        en.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt", stream=True)
    raise AssertionError("subtitles were accepted for streaming")
except openai.BadRequestError as e:
    assert e.param == "response_format", e.param

# verbose_json with word and segment timestamps; the task id comes back in a header.
with audio("en_jfk.wav") as f:
    raw = en.audio.transcriptions.with_raw_response.create(
        model="whisper-1",
        file=f,
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",
        prompt="President Kennedy.",
        temperature=0.0,
    )
task_id = raw.headers.get("x-earshot-task-id")
assert task_id and len(task_id) == 36, raw.headers
verbose = raw.parse()
texts["verbose_json"] = verbose.text
assert verbose.language == "english", verbose.language
assert abs(verbose.duration - 11.0) < 0.1, verbose.duration
assert verbose.segments, "segments"
assert verbose.words and len(verbose.words) >= 15, verbose.words
first, last = verbose.segments[0].start, verbose.segments[-1].end
for w in verbose.words:
    assert first - 0.01 <= w.start <= w.end <= last + 0.01, (w, first, last)

# The finished task can be fetched again through the SDK's generic GET.
status = en.get(f"/tasks/{task_id}", cast_to=object)
assert status["status"] == "completed", status
assert status["text"] == verbose.text, (status["text"], verbose.text)

# Listing models.
models = [m.id for m in en.models.list()]
assert len(models) == 1 and "tiny.en" in models[0], models

# A non-English recording with its language named, on the multilingual server.
with audio("de_test_de.wav") as f:
    de = multi.audio.transcriptions.create(
        model="whisper-1", file=f, language="de", response_format="verbose_json"
    )
assert de.language == "german", de.language
texts["de"] = de.text

# Translation to English.
with audio("fr_test_fr.wav") as f:
    fr = multi.audio.translations.create(model="whisper-1", file=f, response_format="verbose_json")
assert fr.task == "translate", fr.task
texts["fr_translated"] = fr.text

# Errors come back as the SDK's typed exceptions with OpenAI's fields.
try:
    en.audio.transcriptions.create(
        model="whisper-1", file=("notes.wav", b"meeting notes, not audio " * 200)
    )
    raise AssertionError("a non-audio file was accepted")
except openai.APIStatusError as e:
    assert e.status_code == 415, e.status_code
    assert e.code == "unsupported_audio", e.code
    assert e.param == "file", e.param
    assert e.type == "invalid_request_error", e.type

try:
    with audio("de_test_de.wav") as f:
        en.audio.transcriptions.create(model="whisper-1", file=f, language="de")
    raise AssertionError("an English-only model accepted German")
except openai.BadRequestError as e:
    assert e.param == "language", e.param

try:
    with audio("en_arctic_a0024.wav") as f:
        en.audio.transcriptions.create(model="whisper-1", file=f, response_format="text",
                                       timestamp_granularities=["word"])
    raise AssertionError("word timestamps without verbose_json were accepted")
except openai.BadRequestError as e:
    assert e.param == "timestamp_granularities", e.param

try:
    with audio("en_arctic_a0024.wav") as f:
        client(EN_URL, "wrong-key").audio.transcriptions.create(model="whisper-1", file=f)
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", (e.status_code, e.code)

try:
    en.get("/tasks/0b6f3d62-5c1e-4e7a-9a43-0f3f5d0e9b11", cast_to=object)
    raise AssertionError("an unknown task was found")
except openai.NotFoundError:
    pass

print(json.dumps(texts))
