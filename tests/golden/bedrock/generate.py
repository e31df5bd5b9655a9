#!/usr/bin/env python3
"""Regenerates the Bedrock golden fixtures in this directory, independently of the Rust code
(Python's zlib.crc32, struct, base64 and json only).

  python3 tests/golden/bedrock/generate.py

*.bin  : the body of a Claude `invoke-with-response-stream` answer on Amazon Bedrock, as AWS
         event-stream frames (application/vnd.amazon.eventstream). Each Anthropic event is a
         `chunk` event whose payload is {"bytes":"<base64 of the event JSON>","p":"..."}.
*.sse  : the Anthropic SSE stream src/providers/bedrock_stream.rs must turn it into
         ("event: <type>\\ndata: <json>\\n\\n" per event).

References: https://docs.aws.amazon.com/transcribe/latest/dg/event-stream.html (framing),
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModelWithResponseStream.html
and API_runtime_ResponseStream.html (chunk / exceptions),
https://docs.anthropic.com/en/api/claude-on-amazon-bedrock and
https://docs.anthropic.com/en/api/messages-streaming (event shapes).
"""
import base64
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def header(name, value):
    n, v = name.encode(), value.encode()
    return bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v


def frame(headers, payload):
    hd = b"".join(header(n, v) for n, v in headers)
    prelude = struct.pack(">II", 12 + len(hd) + len(payload) + 4, len(hd))
    msg = prelude + struct.pack(">I", zlib.crc32(prelude)) + hd + payload
    return msg + struct.pack(">I", zlib.crc32(msg))


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def chunk(event_json):
    b64 = base64.b64encode(event_json).decode()
    payload = b'{"bytes":"' + b64.encode() + b'","p":"abcdefghij"}'
    return frame(
        [(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")],
        payload,
    )


def exception(exc_type, message):
    return frame(
        [(":exception-type", exc_type), (":content-type", "application/json"), (":message-type", "exception")],
        dumps({"message": message}),
    )


def sse(name, data):
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


CLAUDE_EVENTS = [
    {"type": "message_start", "message": {
        "id": "msg_bdrk_01Qm8dLZ3vKfGx4nT2aWc7Ry", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Héllo 👋"}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "text_delta", "text": "! Line one,\nline \"two\"."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 15}},
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 25, "outputTokenCount": 15, "invocationLatency": 1234,
        "firstByteLatency": 456}},
]


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def main():
    events = [dumps(e) for e in CLAUDE_EVENTS]
    write("claude_stream.bin", b"".join(chunk(e) for e in events))
    write("claude_stream.sse", b"".join(sse(json.loads(e)["type"], e) for e in events))

    head = events[:4]
    msg = "Too many requests, please wait before trying again."
    err = dumps({"type": "error", "error": {"type": "overloaded_error",
                                             "message": "throttlingException: " + msg}})
    write("throttled_midstream.bin", b"".join(chunk(e) for e in head) + exception("throttlingException", msg))
    write("throttled_midstream.sse", b"".join(sse(json.loads(e)["type"], e) for e in head) + sse("error", err))


if __name__ == "__main__":
    main()
