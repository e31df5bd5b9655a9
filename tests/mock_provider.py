#!/usr/bin/env python3
"""Mock LLM providers, one per provider API, strict like the real hosts, with fault injection.

Standard library only: it runs as a standalone script too.

CLI:
    python tests/mock_provider.py --port 18101 --name primary [--api anthropic] [--host 127.0.0.1]
        [--quiet] [--no-strict] [--option KEY=VALUE ...]      (VALUE is JSON, or else a string)

Prints ``mock provider <name> listening on http://HOST:PORT`` (flushed) once listening.

Library:
    server, port = start_mock("primary", port=0, api="bedrock", models=["us.anthropic.claude-opus-4-6-v1:0"])
    server, port = start_mock("small", answer_text="The quick brown fox", max_prompt_chars=2000)
    server.set_answer({"continuation": "start_over"})   # as POST /_control/answer (ValueError if invalid)
    ...
    server.shutdown()   # stops serving, closes the listener and all open connections

APIs (``api=``), their endpoints and options (every API also takes ``strict`` (default True: reject
what the real host rejects; False: skip credential and schema checks, keep routing and required
fields), ``keys`` (list of accepted credentials; default: any well-formed one) and the answer
setting's initial values ``answer_text``, ``continuation``, ``reject_prefill``, ``max_prompt_chars``
(see "The answer" below)):

    anthropic  POST /v1/messages             (default; no credential check unless ``keys`` is given)
    vertex     POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict
               POST ...:streamRawPredict          options: project ("demo-project"), region ("us-east5")
    bedrock    POST /model/{modelId}/invoke, /model/{modelId}/invoke-with-response-stream
               options: models (accepted ids; default any id containing "anthropic.claude"),
                        frame_split ("mixed" (default), "aligned", "tiny": how event-stream frames
                        map onto HTTP chunks)
    openai     POST /v1/chat/completions
    azure      POST /openai/deployments/{deployment}/chat/completions?api-version=YYYY-MM-DD[-preview]
               options: deployments ({"gpt-4o": "gpt-4o-2024-11-20"}: deployment -> reported model)

Control endpoints (all APIs):
    GET  /_control/health      {"ok": true, "name": ...}
    GET  /_control/info        {"name", "api", "options"}
    POST /_control/fault       {"mode": M, ...params} -> echo; invalid -> 400
    GET  /_control/fault       current fault (with remaining count)
    POST /_control/answer      {"text": str | null, "continuation": "exact" | "start_over",
                                "reject_prefill": bool, "max_prompt_chars": int | null}, every field
                               optional: merged into the current setting -> the whole setting;
                               invalid (unknown field, bad value) -> 400 {"ok": false, "error": ...}
    GET  /_control/answer      the current answer setting
    GET  /_control/requests    recorded requests (rejected ones too), each with "api", "credential"
                               (the credential headers present), "query", "route" (URL parameters),
                               "continuation" ("prefill" | "instruction" | null, see below)
    POST /_control/reset       clear recorded requests, fault = none, the answer setting back to the
                               server options (defaults: text null, continuation "exact",
                               reject_prefill false, max_prompt_chars null)

A request is checked in the real host's order: URL (404), credential (401/403), body (400), the
answer setting's limits (400: reject_prefill, max_prompt_chars; they consume no fault `count`), and
only then the fault applies. Strict checks per API:
    anthropic  unknown top-level fields ("<field>: Extra inputs are not permitted", anthropic_version
               included), roles user/assistant, content a string or blocks with a `type`, a
               tool_result must answer a tool_use of the previous assistant message.
    vertex     Authorization: Bearer (401 UNAUTHENTICATED); project/region/publisher/model/verb
               (404 NOT_FOUND); no `model` in the body; anthropic_version "vertex-2023-10-16";
               `stream` true exactly for :streamRawPredict; the anthropic checks (400, Anthropic shape).
    bedrock    Authorization: Bearer <API key> (403 AccessDeniedException); model id (404
               ResourceNotFoundException); no `model`/`stream` in the body; anthropic_version
               "bedrock-2023-05-31"; the anthropic checks (400 ValidationException, x-amzn-ErrorType).
    openai     Authorization: Bearer sk-... (401 invalid_api_key); unknown parameters ("Unrecognized
               request argument supplied: X"); model; non-empty messages; roles, content parts,
               tool_calls, tool_call_id answering an earlier assistant tool call; temperature in
               [0, 2]; stream_options only with stream.
    azure      api-version (missing: 404, malformed/too old: 400); the `api-key` header (401; a
               Bearer token alone is refused); deployment (404 DeploymentNotFound); the openai checks
               with `model` optional.

Fault modes: none, 500, 529, 429, 503, 400, 401, 403, 404, 413, hang, reset, stream_error,
truncate, slow_first_byte, garbage, slow_first_token, stall, late_end, no_done, error_first,
html_error, truncate_after, context_overflow. Params: count, retry_after, hang_ms, delay_ms, chunk_delay_ms,
after_deltas, status, exception (bedrock stream_error / error_first exception type), frame_split
(bedrock). Each API answers a fault in its own error shape; 529 is an Anthropic status (anthropic,
vertex): the others answer 503. `count` N: the fault applies to the next N API requests, then
reverts to none.

The stream modes below speak each API's wire format: Anthropic SSE (anthropic, vertex), event-stream
frames (bedrock: the same Anthropic events, one `chunk` frame each), chat.completion.chunk SSE
(openai, azure). A stream's *preamble* is what comes before its first content delta: message_start,
content_block_start, ping (anthropic, vertex, bedrock); the chunk with delta.role "assistant"
(openai, azure). Its *content deltas* are the content_block_delta events (text_delta, or
input_json_delta for a tool answer), resp. the chunks between the role chunk and the finish_reason
chunk (text pieces, or for a tool answer the tool_calls chunk naming the tool, then the argument
pieces). The waits of slow_first_token, late_end and a streamed stall end early (the handler stops
quietly, leaving the body unterminated) when the client disconnects or the server shuts down.
`chunk_delay_ms` and (bedrock) `frame_split` apply to these streams as to normal ones.
    slow_first_token  delay_ms (2000). Stream: 200 and the preamble at once, delay_ms of silence,
                      then the rest of the normal stream (first content delta onward) to its normal
                      end. Non-stream: delay_ms before anything, then the normal JSON answer.
    stall             after_deltas (3), hang_ms (60000). Stream: the stream through its
                      after_deltas-th content delta, then nothing for hang_ms (connection open),
                      then the connection closes without the chunked terminator or terminal event.
                      The answer is made longer so that deltas always remain unsent ("Hello from
                      <name>" becomes "Hello", " from", " <name>", ",", " streaming", " slowly",
                      "." and more pieces if needed; tool arguments are split finer / prefixed with
                      whitespace). Non-stream: like hang.
    late_end          delay_ms (300). Stream: the complete normal stream, terminal event included
                      (message_stop; data: [DONE]; bedrock's last chunk frame with the invocation
                      metrics), then delay_ms before the chunked terminator. Non-stream: the whole
                      JSON answer as one chunk of a chunked body, delay_ms, then the terminator.
    no_done           openai, azure stream: the normal stream (finish_reason chunk, and the usage
                      chunk with stream_options.include_usage) without `data: [DONE]`, then a
                      clean end. Otherwise (other APIs, non-stream): like none.
    error_first       Stream: 200, then as the first and only event an error (anthropic/vertex:
                      `event: error` overloaded_error; openai/azure: `data: {"error": {"message":
                      "The server is overloaded", "type": "server_error", ...}}`; bedrock: an
                      exception frame, `exception` (default throttlingException)), then a clean
                      end. Non-stream: like stream_error (529 anthropic/vertex, 503 the others).
    stream_error      after_deltas (none). Stream: without after_deltas, the start of the stream
                      (anthropic, vertex, bedrock: message_start, content_block_start and the first
                      delta, no ping; openai, azure: the role chunk and the first piece); with
                      after_deltas, the stream through its after_deltas-th content delta (the
                      answer made longer as for truncate_after when it has no more deltas than
                      that). Then the overload error as error_first sends it (bedrock: `exception`),
                      then a clean end. Non-stream: 529 (anthropic, vertex) or 503 (the others).
    html_error        status (502; 400-599). That status with content-type text/html and a small
                      load-balancer error page (no provider headers), stream or not.
    truncate_after    after_deltas (2). Stream: the stream through its after_deltas-th content
                      delta, then a clean end of the body (chunked terminator, whole frames) with no
                      terminal event; when the answer has no more than after_deltas deltas it is
                      made longer as for stall. Non-stream: like truncate.
    context_overflow  A 400 "prompt too long", stream or not: anthropic, vertex {"type": "error",
                      "error": {"type": "invalid_request_error", "message": "prompt is too long:
                      215000 tokens > 200000 maximum"}}; bedrock a ValidationException "Input is too
                      long for requested model."; openai, azure {"error": {"message": "This model's
                      maximum context length is 128000 tokens. However, your messages resulted in
                      215000 tokens. Please reduce the length of the messages.", "type":
                      "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}.

The answer (the answer setting: text, continuation, reject_prefill, max_prompt_chars):
    By default (text null) the answer is "Hello from <name>" (pieces "Hello", " from", " <name>"), 12
    input / 5 output tokens; a request declaring tools whose last turn is a plain user message gets a
    call to the first declared tool (or the one tool_choice names) with input {"location": "Paris"};
    a last turn carrying a tool result gets "Tool said: <result>". Those two keep 5 output tokens.
    text             The plain answer instead of the hello, cut at word boundaries: each piece a word
                     with the whitespace before it ("The quick brown" -> "The", " quick", " brown"),
                     one content delta per piece in a stream; output tokens = the number of pieces in
                     the answer (usage, message_delta, the usage chunk, bedrock's metrics and token
                     headers), 12 input tokens. stall, truncate_after and stream_error lengthen it
                     with LONG_FILLER pieces only when it has too few.
    Continuation requests (only when text is set; recorded as "continuation" in /_control/requests):
      prefill        The last message is the assistant's with only text (Anthropic-shaped: a string
                     or text blocks; OpenAI: a string or text parts, no tool_calls). P = its text
                     without trailing whitespace; the answer is the rest of text after P (the whole
                     text when text does not start with P).
      instruction    The last message is a user turn (not a tool result) whose text contains a
                     prefix of text of at least 5 characters; P = the longest such prefix; the
                     answer is the rest of text after P.
      The rest is cut at word boundaries the same way (its first piece may begin with a space; an
      empty rest is an answer without content deltas, 0 output tokens). A continuation request is
      answered with text even when it declares tools.
    continuation     "exact" (default): a continuation request gets the rest; "start_over": it gets
                     the whole text from the beginning (a model that restarts its answer).
    reject_prefill   false (default). true: on anthropic, vertex and bedrock, any conversation ending
                     with an assistant message (text set or not) gets what Claude Opus 4.6 answers,
                     400 invalid_request_error (bedrock: ValidationException) "This model does not
                     support assistant message prefill. The conversation must end with a user
                     message."; openai and azure ignore it.
    max_prompt_chars null (default). An integer: a request whose prompt text (system prompt plus
                     every message's text, tool results included) is longer gets context_overflow's
                     400, whatever the fault mode.

References (shapes and errors):
    https://docs.anthropic.com/en/api/messages
    https://docs.anthropic.com/en/api/errors
    https://docs.anthropic.com/en/api/claude-on-vertex-ai
    https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude/use-claude
    https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages.html
    https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModelWithResponseStream.html
    https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys-use.html
    https://docs.aws.amazon.com/transcribe/latest/dg/event-stream.html        (event-stream framing)
    https://platform.openai.com/docs/api-reference/chat/create
    https://platform.openai.com/docs/api-reference/chat-streaming
    https://platform.openai.com/docs/guides/error-codes
    https://learn.microsoft.com/en-us/azure/ai-services/openai/reference
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import selectors
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APIS = ("anthropic", "vertex", "bedrock", "openai", "azure")

VALID_MODES = (
    "none",
    "500",
    "529",
    "429",
    "503",
    "400",
    "401",
    "403",
    "404",
    "413",
    "hang",
    "reset",
    "stream_error",
    "truncate",
    "slow_first_byte",
    "garbage",
    "slow_first_token",
    "stall",
    "late_end",
    "no_done",
    "error_first",
    "html_error",
    "truncate_after",
    "context_overflow",
)

# Numeric fault params: name -> (default, allow_null)
_NUMERIC_PARAMS = {
    "count": (None, True),
    "retry_after": (2, True),
    "hang_ms": (60000, False),
    "delay_ms": (2000, False),
    "chunk_delay_ms": (0, False),
    "after_deltas": (3, False),  # a non-negative integer
    "status": (502, False),  # an integer in [400, 599]
}

# Defaults that depend on the mode: (mode, param) -> default.
_MODE_DEFAULTS = {
    ("slow_first_token", "delay_ms"): 2000,
    ("late_end", "delay_ms"): 300,
    ("stall", "after_deltas"): 3,
    ("stall", "hang_ms"): 60000,
    ("truncate_after", "after_deltas"): 2,
    ("html_error", "status"): 502,
}


def fault_param(fault: dict, key: str):
    """A numeric param of a fault, or its default for the fault's mode."""
    val = fault.get(key)
    if val is None:
        return _MODE_DEFAULTS.get((fault.get("mode"), key), _NUMERIC_PARAMS[key][0])
    return val


# The longer answer of `stall` (and of `truncate_after` when the answer is too short), then filler.
LONG_HELLO = ["Hello", " from", " {name}", ",", " streaming", " slowly", "."]
LONG_FILLER = [" Still", " streaming", "."]

FRAME_SPLITS = ("mixed", "aligned", "tiny")

# Exception types a Bedrock response stream can carry (InvokeModelWithResponseStream, ResponseStream).
BEDROCK_STREAM_EXCEPTIONS = {
    "internalServerException": "The system encountered an unexpected error during processing. Try your request again.",
    "modelStreamErrorException": "The model stream encountered an error.",
    "validationException": "Input validation failed.",
    "throttlingException": "Too many requests, please wait before trying again.",
    "modelTimeoutException": "The request took too long to process.",
    "serviceUnavailableException": "The service is currently unavailable.",
}

# Client errors a real Anthropic API answers: they say nothing about the provider's health.
CLIENT_ERRORS = {
    "400": ("invalid_request_error", "messages: field required"),
    "401": ("authentication_error", "invalid x-api-key"),
    "403": ("permission_error", "Your API key does not have permission to use the specified resource."),
    "404": ("not_found_error", "The requested resource could not be found."),
    "413": ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
}

INPUT_TOKENS = 12
OUTPUT_TOKENS = 5

# The answer setting (POST /_control/answer, or the server options of the same names; `text` is the
# option `answer_text`): field -> default.
ANSWER_DEFAULTS = {"text": None, "continuation": "exact", "reject_prefill": False, "max_prompt_chars": None}
CONTINUATIONS = ("exact", "start_over")
# An instruction turn quotes at least this much of the configured text's start.
MIN_QUOTED_PREFIX = 5

# What Claude Opus 4.6 answers to a conversation ending with an assistant message.
PREFILL_UNSUPPORTED = ("This model does not support assistant message prefill. The conversation must end with "
                       "a user message.")
# Context overflow, in each host's words.
ANTHROPIC_TOO_LONG = "prompt is too long: 215000 tokens > 200000 maximum"
BEDROCK_TOO_LONG = "Input is too long for requested model."
OPENAI_TOO_LONG = ("This model's maximum context length is 128000 tokens. However, your messages resulted in "
                   "215000 tokens. Please reduce the length of the messages.")

TOOL_INPUT = {"location": "Paris"}

VERTEX_VERSION = "vertex-2023-10-16"
BEDROCK_VERSION = "bedrock-2023-05-31"
AWS_ERROR_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"

# Top-level Messages API parameters (https://docs.anthropic.com/en/api/messages, and the
# anthropic SDK's MessageCreateParams).
ANTHROPIC_PARAMS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
    "context_management", "cache_control", "output_config", "inference_geo", "speed", "diagnostics",
    "user_profile_id", "workspace_id",
})
VERTEX_PARAMS = (ANTHROPIC_PARAMS - {"model"}) | {"anthropic_version"}
BEDROCK_PARAMS = (ANTHROPIC_PARAMS - {"model", "stream"}) | {"anthropic_version", "anthropic_beta"}

# Chat Completions parameters (https://platform.openai.com/docs/api-reference/chat/create, and the
# openai SDK's CompletionCreateParams).
OPENAI_PARAMS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
    "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n",
    "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
# Azure OpenAI adds "On your data" (https://learn.microsoft.com/en-us/azure/ai-services/openai/reference).
AZURE_PARAMS = OPENAI_PARAMS | {"data_sources"}

OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool")
OPENAI_USER_PARTS = ("text", "image_url", "input_audio", "file")

AZURE_API_VERSION = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(-preview)?$")
AZURE_MIN_API_VERSION = "2022-12-01"

_MAX_BODY = 64 * 1024 * 1024

# Error messages of the real hosts (see the references above).
GOOGLE_AUTH_MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
GOOGLE_AUTH_INVALID = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-"
    "in/web/devconsole-project."
)
AZURE_KEY_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your resource."
)
AZURE_NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within the "
    "last 5 minutes, please wait a moment and try again."
)
BEDROCK_NO_MODEL = (
    "Could not resolve the foundation model from the provided model identifier."
)
OPENAI_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using"
    " Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
_REFORMAT = "please reformat your input and try again."


class BadRequest(Exception):
    pass


class Reject(Exception):
    """An HTTP error answer: status, JSON body, extra headers."""

    def __init__(self, status: int, body, headers: dict | None = None):
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def _hex(n: int) -> str:
    return uuid.uuid4().hex[:n]


def _new_msg_id(prefix: str = "msg_") -> str:
    return prefix + _hex(24)


def _new_req_id() -> str:
    return "req_" + _hex(24)


def anthropic_error(err_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": err_type, "message": message}}


def google_error(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


def openai_error(message: str, err_type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def azure_error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def bedrock_reject(status: int, exc: str, message: str) -> Reject:
    return Reject(status, {"message": message}, {"x-amzn-ErrorType": exc + AWS_ERROR_SUFFIX})


def _bedrock_malformed(detail: str) -> Reject:
    return bedrock_reject(400, "ValidationException", f"Malformed input request: #: {detail}, {_REFORMAT}")


def validate_fault(data) -> dict:
    """Validate a fault spec; returns the normalized dict or raises ValueError."""
    if not isinstance(data, dict):
        raise ValueError("fault must be a JSON object")
    if "mode" not in data:
        raise ValueError("missing 'mode'")
    mode = data["mode"]
    if isinstance(mode, bool) or not isinstance(mode, (str, int)):
        raise ValueError("'mode' must be a string")
    mode = str(mode)
    if mode not in VALID_MODES:
        raise ValueError(f"invalid mode {mode!r}; valid: {', '.join(VALID_MODES)}")
    out = dict(data)
    out["mode"] = mode
    for key, (_default, allow_null) in _NUMERIC_PARAMS.items():
        if key not in out:
            continue
        val = out[key]
        if val is None:
            if not allow_null:
                raise ValueError(f"{key!r} must not be null")
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or val < 0:
            raise ValueError(f"{key!r} must be a non-negative number")
        if key == "count":
            if int(val) != val or val < 1:
                raise ValueError("'count' must be a positive integer")
            out[key] = int(val)
        if key == "after_deltas":
            if int(val) != val:
                raise ValueError("'after_deltas' must be a non-negative integer")
            out[key] = int(val)
        if key == "status":
            if int(val) != val or not 400 <= val <= 599:
                raise ValueError("'status' must be an integer in [400, 599]")
            out[key] = int(val)
    if "exception" in out and out["exception"] not in BEDROCK_STREAM_EXCEPTIONS:
        raise ValueError(f"invalid exception {out['exception']!r}; valid: {', '.join(BEDROCK_STREAM_EXCEPTIONS)}")
    if "frame_split" in out and out["frame_split"] not in FRAME_SPLITS:
        raise ValueError(f"invalid frame_split {out['frame_split']!r}; valid: {', '.join(FRAME_SPLITS)}")
    return out


def validate_answer(data, base: dict | None = None) -> dict:
    """Validate an answer setting (all fields optional) merged onto `base` (default: the defaults);
    returns the full setting or raises ValueError."""
    if not isinstance(data, dict):
        raise ValueError("answer must be a JSON object")
    unknown = sorted(set(data) - set(ANSWER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; valid: {', '.join(ANSWER_DEFAULTS)}")
    out = {**ANSWER_DEFAULTS, **(base or {}), **data}
    text = out["text"]
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise ValueError("'text' must be null or a string with at least one non-whitespace character")
    if out["continuation"] not in CONTINUATIONS:
        raise ValueError(f"invalid continuation {out['continuation']!r}; valid: {', '.join(CONTINUATIONS)}")
    if not isinstance(out["reject_prefill"], bool):
        raise ValueError("'reject_prefill' must be a boolean")
    mpc = out["max_prompt_chars"]
    if mpc is not None and (isinstance(mpc, bool) or not isinstance(mpc, int) or mpc < 0):
        raise ValueError("'max_prompt_chars' must be null or a non-negative integer")
    return out


# Options every API takes besides its own (see the module docstring); the answer setting's defaults.
_ANSWER_OPTIONS = {"answer_text": None, "continuation": "exact", "reject_prefill": False, "max_prompt_chars": None}


def answer_from_options(options: dict) -> dict:
    """The answer setting the server options give (the one POST /_control/reset restores)."""
    return validate_answer({"text": options["answer_text"], "continuation": options["continuation"],
                            "reject_prefill": options["reject_prefill"],
                            "max_prompt_chars": options["max_prompt_chars"]})


_DEFAULT_OPTIONS = {
    "anthropic": {},
    "vertex": {"project": "demo-project", "region": "us-east5", "models": None},
    "bedrock": {"models": None, "frame_split": "mixed"},
    "openai": {},
    "azure": {"deployments": {"gpt-4o": "gpt-4o-2024-11-20"}},
}


def normalize_options(api: str, options: dict) -> dict:
    if api not in APIS:
        raise ValueError(f"invalid api {api!r}; valid: {', '.join(APIS)}")
    out = {"strict": True, "keys": None, **_ANSWER_OPTIONS, **_DEFAULT_OPTIONS[api]}
    for key, val in options.items():
        if key not in out:
            raise TypeError(f"unknown option {key!r} for api {api!r}; valid: {', '.join(out)}")
        out[key] = val
    if out["keys"] is not None:
        out["keys"] = list(out["keys"])
    if api == "bedrock" and out["frame_split"] not in FRAME_SPLITS:
        raise ValueError(f"invalid frame_split {out['frame_split']!r}; valid: {', '.join(FRAME_SPLITS)}")
    if api == "azure" and not isinstance(out["deployments"], dict):
        raise ValueError("'deployments' must be a dict deployment -> model name")
    answer_from_options(out)  # raises ValueError
    return out


# ---- AWS event stream (application/vnd.amazon.eventstream) ----------------------------------


def eventstream_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude (total len, headers len, CRC32), string headers,
    payload, message CRC32 (https://docs.aws.amazon.com/transcribe/latest/dg/event-stream.html)."""
    hbytes = b""
    for name, value in headers:
        n, v = name.encode(), value.encode()
        hbytes += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hbytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hbytes))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + hbytes + payload
    return head + struct.pack(">I", zlib.crc32(head))


_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def bedrock_chunk_frame(event: dict, index: int) -> bytes:
    payload = {"bytes": base64.b64encode(json.dumps(event).encode()).decode(), "p": _PAD[: 1 + (index * 11) % len(_PAD)]}
    headers = [(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")]
    return eventstream_frame(headers, json.dumps(payload).encode())


def bedrock_exception_frame(exc: str, message: str) -> bytes:
    headers = [(":exception-type", exc), (":content-type", "application/json"), (":message-type", "exception")]
    body = {"message": message}
    if exc == "modelStreamErrorException":
        body["originalStatusCode"] = 500
    return eventstream_frame(headers, json.dumps(body).encode())


def split_frames(frames: list[bytes], how: str) -> list[bytes]:
    """Map frames onto HTTP chunks. "mixed": chunk boundaries do not follow frames (a frame split
    across two chunks, several frames in one chunk); "aligned": one frame per chunk; "tiny": 5 bytes
    per chunk."""
    if how == "aligned":
        return list(frames)
    data = b"".join(frames)
    if how == "tiny":
        return [data[i:i + 5] for i in range(0, len(data), 5)]
    cuts, offset = [], 0
    for i, f in enumerate(frames):
        if i % 3 == 0:
            cuts.append(offset + len(f) // 2)  # mid-frame
        elif i % 3 == 2:
            cuts.append(offset + len(f))  # two frames (halves included) in one chunk
        offset += len(f)
    chunks, prev = [], 0
    for c in cuts + [len(data)]:
        if c > prev:
            chunks.append(data[prev:c])
            prev = c
    return chunks


# ---- what to answer --------------------------------------------------------------------------


@dataclass
class Plan:
    kind: str  # "text" | "tool"
    pieces: list = field(default_factory=list)
    tool_name: str = ""
    tool_id: str = ""
    args_pieces: list = field(default_factory=list)
    output_tokens: int | None = None  # None: OUTPUT_TOKENS

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        return OUTPUT_TOKENS if self.output_tokens is None else self.output_tokens

    @property
    def args(self) -> str:
        return "".join(self.args_pieces)


def _tool_args_pieces() -> list[str]:
    s = json.dumps(TOOL_INPUT)  # '{"location": "Paris"}'
    return [s[:12], s[12:17], s[17:]]


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def split_words(text: str) -> list[str]:
    """`text` cut at word boundaries, each piece a word with the whitespace before it ("The quick
    brown" -> "The", " quick", " brown"); trailing whitespace stays with the last piece, so the
    pieces always join to `text` ("" has no pieces)."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[sum(map(len, pieces)):]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces = [tail]
    return pieces


def text_plan(text: str) -> Plan:
    """A configured answer text (or what remains of it): one piece per word, one output token each."""
    pieces = split_words(text)
    return Plan("text", pieces, output_tokens=len(pieces))


def _turn_text(content) -> str | None:
    """The text of a content that is only text: a string, or a list of text blocks/parts; else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str) for b in content):
        return "".join(b["text"] for b in content)
    return None


def longest_prefix_in(text: str, haystack: str) -> int:
    """The length of the longest prefix of `text` that occurs in `haystack` (every shorter prefix of
    a prefix that occurs also occurs, so a binary search finds it)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text[:mid] in haystack:
            lo = mid
        else:
            hi = mid - 1
    return lo


def continuation_of(body, text: str | None) -> tuple[str | None, str]:
    """How a request continues a partial answer of the configured `text`: ("prefill", P) when the
    last message is the assistant's (only text; P is its text without trailing whitespace, or "" when
    `text` does not start with it), ("instruction", P) when the last message is a user turn (not a
    tool result) quoting a prefix of `text` of at least MIN_QUOTED_PREFIX characters (P the longest
    one), else (None, "")."""
    msgs = body.get("messages") if isinstance(body, dict) else None
    if not text or not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
        return None, ""
    last = msgs[-1]
    role, content = last.get("role"), last.get("content")
    if role == "assistant":
        said = None if last.get("tool_calls") else _turn_text(content)
        if said is None:
            return None, ""
        said = said.rstrip()
        return "prefill", said if text.startswith(said) else ""
    if role == "user":
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return None, ""
        n = longest_prefix_in(text, _text_of(content))
        if n >= MIN_QUOTED_PREFIX:
            return "instruction", text[:n]
    return None, ""


def _chars(content) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_chars(b) for b in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return len(content["text"])
        if content.get("type") == "tool_result":
            return _chars(content.get("content"))
    return 0


def prompt_chars(body) -> int:
    """The text length of a request's prompt: the system prompt and every message's text (strings,
    text blocks/parts, tool results)."""
    if not isinstance(body, dict):
        return 0
    msgs = body.get("messages")
    total = _chars(body.get("system"))
    for m in msgs if isinstance(msgs, list) else ():
        if isinstance(m, dict):
            total += _chars(m.get("content"))
    return total


def anthropic_plan(body: dict, name: str, normal: Plan | None = None) -> Plan:
    """The answer to an Anthropic-shaped request; `normal`: the plain answer (default the hello)."""
    hello = normal or Plan("text", ["Hello", " from", " " + name])
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
        return hello
    last = msgs[-1]
    content = last.get("content")
    if last.get("role") == "user" and isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            return Plan("text", ["Tool said: ", _text_of(results[-1].get("content"))])
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if last.get("role") != "user" or not isinstance(tools, list) or not tools:
        return hello
    if isinstance(choice, dict) and choice.get("type") == "none":
        return hello
    tool = tools[0] if isinstance(tools[0], dict) else {}
    tname = tool.get("name") or tool.get("type") or "tool"
    if isinstance(choice, dict) and choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        tname = choice["name"]
    return Plan("tool", tool_name=tname, tool_id="toolu_" + _hex(24), args_pieces=_tool_args_pieces())


def openai_plan(body: dict, name: str, normal: Plan | None = None) -> Plan:
    """The answer to a Chat Completions request; `normal`: the plain answer (default the hello)."""
    hello = normal or Plan("text", ["Hello", " from", " " + name])
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
        return hello
    last = msgs[-1]
    if last.get("role") == "tool":
        return Plan("text", ["Tool said: ", _text_of(last.get("content"))])
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if last.get("role") != "user" or not isinstance(tools, list) or not tools or choice == "none":
        return hello
    tool = tools[0] if isinstance(tools[0], dict) else {}
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
    tname = fn.get("name") or "tool"
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str):
        tname = choice["function"]["name"]
    return Plan("tool", tool_name=tname, tool_id="call_" + _hex(24), args_pieces=_tool_args_pieces())


# ---- Anthropic-shaped payloads (anthropic, vertex, bedrock) --------------------------------


def anthropic_message(model, plan: Plan, id_prefix: str = "msg_") -> dict:
    if plan.kind == "tool":
        content = [{"type": "tool_use", "id": plan.tool_id, "name": plan.tool_name, "input": dict(TOOL_INPUT)}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": plan.text}]
        stop = "end_turn"
    return {
        "id": _new_msg_id(id_prefix),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": plan.tokens},
    }


def anthropic_events(model, plan: Plan, id_prefix: str = "msg_", partial: bool = False) -> list[tuple[str, dict]]:
    """The SSE events of an answer; `partial`: only the start (message_start, block start, 1st delta)."""
    start = (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": _new_msg_id(id_prefix), "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
            },
        },
    )
    if plan.kind == "tool":
        block = {"type": "tool_use", "id": plan.tool_id, "name": plan.tool_name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in plan.args_pieces]
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in plan.pieces]
        stop = "end_turn"
    events = [start, ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})]
    if partial:
        return events + [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
                         for d in deltas[:1]]
    events.append(("ping", {"type": "ping"}))
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": {"output_tokens": plan.tokens}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def sse_event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


# ---- OpenAI-shaped payloads (openai, azure) -------------------------------------------------


def openai_completion(model, plan: Plan, azure: bool = False) -> dict:
    if plan.kind == "tool":
        message = {
            "role": "assistant", "content": None, "refusal": None,
            "tool_calls": [{"id": plan.tool_id, "type": "function",
                            "function": {"name": plan.tool_name, "arguments": plan.args}}],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": plan.text, "refusal": None}
        finish = "stop"
    out = {
        "id": "chatcmpl-" + _hex(29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": plan.tokens,
                  "total_tokens": INPUT_TOKENS + plan.tokens},
        "system_fingerprint": "fp_" + _hex(10),
    }
    if azure:
        out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
    return out


def openai_chunks(model, plan: Plan, include_usage: bool = False, partial: bool = False) -> list[dict]:
    """The chat.completion.chunk objects of an answer; `partial`: the role chunk and one piece."""
    cid, created, fp = "chatcmpl-" + _hex(29), int(time.time()), "fp_" + _hex(10)

    def chunk(delta, finish=None, choices=True):
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": fp,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
        if include_usage:
            c["usage"] = None
        return c

    if plan.kind == "tool":
        first = chunk({"role": "assistant", "content": None, "refusal": None})
        body = [chunk({"tool_calls": [{"index": 0, "id": plan.tool_id, "type": "function",
                                       "function": {"name": plan.tool_name, "arguments": ""}}]})]
        body += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in plan.args_pieces]
        finish = "tool_calls"
    else:
        first = chunk({"role": "assistant", "content": "", "refusal": None})
        body = [chunk({"content": p}) for p in plan.pieces]
        finish = "stop"
    if partial:
        return [first] + body[:1]
    out = [first] + body + [chunk({}, finish)]
    if include_usage:
        last = chunk(None, choices=False)
        last["usage"] = {"prompt_tokens": INPUT_TOKENS, "completion_tokens": plan.tokens,
                         "total_tokens": INPUT_TOKENS + plan.tokens}
        out.append(last)
    return out


def sse_data(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def status_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def html_error_page(status: int) -> bytes:
    """A load balancer's error page (nginx style)."""
    title = f"{status} {status_reason(status)}"
    return (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
            "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()


# ---- request validation ----------------------------------------------------------------------


def anthropic_messages_problem(body: dict) -> str | None:
    """The first problem the Messages API would report in `messages`, in its words, or None.

    Roles user/assistant; content a string or a list of blocks, each with a `type`; a tool_result
    must answer a tool_use of the previous (assistant) message.
    """
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return "messages: Input should be a valid list"
    prev_tool_ids: set = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        role = m.get("role")
        if "role" not in m:
            return f"messages.{i}.role: Field required"
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if "content" not in m:
            return f"messages.{i}.content: Field required"
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            return f"messages.{i}.{extra[0]}: Extra inputs are not permitted"
        content = m["content"]
        tool_ids: set = set()
        if isinstance(content, list):
            for j, b in enumerate(content):
                where = f"messages.{i}.content.{j}"
                if not isinstance(b, dict):
                    return f"{where}: Input should be a valid dictionary"
                btype = b.get("type")
                if "type" not in b:
                    return f"{where}.type: Field required"
                if not isinstance(btype, str):
                    return f"{where}.type: Input should be a valid string"
                if btype == "text" and not isinstance(b.get("text"), str):
                    return f"{where}.text: Field required"
                if btype == "tool_use":
                    for k in ("id", "name", "input"):
                        if k not in b:
                            return f"{where}.tool_use.{k}: Field required"
                    if role != "assistant":
                        return f"{where}: `tool_use` blocks can only be in `assistant` messages"
                    tool_ids.add(b["id"])
                if btype == "tool_result":
                    if "tool_use_id" not in b:
                        return f"{where}.tool_result.tool_use_id: Field required"
                    if role != "user":
                        return f"{where}: `tool_result` blocks can only be in `user` messages"
                    if b["tool_use_id"] not in prev_tool_ids:
                        return (f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {b['tool_use_id']}. "
                                "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
        elif not isinstance(content, str):
            return f"messages.{i}.content: Input should be a valid list"
        prev_tool_ids = tool_ids
    return None


def _invalid_value(value, allowed, param) -> Reject:
    quoted = [f"'{a}'" for a in allowed]
    supported = ", ".join(quoted[:-1]) + ", and " + quoted[-1]
    return Reject(400, openai_error(f"Invalid value: '{value}'. Supported values are: {supported}.",
                                    param=param, code="invalid_value"))


def _missing(param) -> Reject:
    return Reject(400, openai_error(f"Missing required parameter: '{param}'.", param=param,
                                    code="missing_required_parameter"))


def _invalid_type(param, expected, got) -> Reject:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
             float: "a decimal", type(None): "null"}
    got_kind = kinds.get(type(got), "a value")
    return Reject(400, openai_error(f"Invalid type for '{param}': expected {expected}, but got {got_kind} instead.",
                                    param=param, code="invalid_type"))


def openai_validate(body: dict, allowed: frozenset, model_required: bool = True) -> None:
    """Raises Reject (OpenAI error shape) for what the Chat Completions API refuses."""
    for k in body:
        if k not in allowed:
            raise Reject(400, openai_error(f"Unrecognized request argument supplied: {k}"))
    if "model" not in body:
        if model_required:
            raise Reject(400, openai_error("you must provide a model parameter"))
    elif not isinstance(body["model"], str):
        raise _invalid_type("model", "a string", body["model"])
    if "messages" not in body:
        raise _missing("messages")
    msgs = body["messages"]
    if not isinstance(msgs, list):
        raise _invalid_type("messages", "an array", msgs)
    if not msgs:
        raise Reject(400, openai_error("Invalid 'messages': empty array. Expected an array with minimum length 1, "
                                       "but got an empty array instead.", param="messages", code="empty_array"))
    pending: set = set()
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid_type(p, "an object", m)
        if "role" not in m:
            raise _missing(f"{p}.role")
        role = m["role"]
        if role not in OPENAI_ROLES:
            raise _invalid_value(role, OPENAI_ROLES, f"{p}.role")
        content = m.get("content")
        if role == "assistant":
            calls = m.get("tool_calls")
            if content is None and not calls:
                raise _missing(f"{p}.content")
            if content is not None and not isinstance(content, (str, list)):
                raise _invalid_type(f"{p}.content", "one of a string or array of objects", content)
            if isinstance(content, list):
                _check_parts(content, f"{p}.content", ("text", "refusal"))
            ids = set()
            if calls is not None:
                if not isinstance(calls, list):
                    raise _invalid_type(f"{p}.tool_calls", "an array", calls)
                for j, c in enumerate(calls):
                    cp = f"{p}.tool_calls[{j}]"
                    if not isinstance(c, dict):
                        raise _invalid_type(cp, "an object", c)
                    for k in ("id", "type", "function"):
                        if k not in c:
                            raise _missing(f"{cp}.{k}")
                    if c["type"] != "function":
                        raise _invalid_value(c["type"], ("function",), f"{cp}.type")
                    fn = c["function"]
                    if not isinstance(fn, dict):
                        raise _invalid_type(f"{cp}.function", "an object", fn)
                    for k in ("name", "arguments"):
                        if k not in fn:
                            raise _missing(f"{cp}.function.{k}")
                    if not isinstance(fn["arguments"], str):
                        raise _invalid_type(f"{cp}.function.arguments", "a string", fn["arguments"])
                    ids.add(c["id"])
            pending = ids
            continue
        if "content" not in m or content is None:
            raise _missing(f"{p}.content")
        if not isinstance(content, (str, list)):
            raise _invalid_type(f"{p}.content", "one of a string or array of objects", content)
        if isinstance(content, list):
            _check_parts(content, f"{p}.content", OPENAI_USER_PARTS if role == "user" else ("text",))
        if role == "tool":
            if "tool_call_id" not in m:
                raise _missing(f"{p}.tool_call_id")
            if m["tool_call_id"] not in pending:
                raise Reject(400, openai_error("Invalid parameter: messages with role 'tool' must be a response to a "
                                               "preceeding message with 'tool_calls'.", param=f"messages.[{i}].role"))
        else:
            pending = set()
    if "temperature" in body and body["temperature"] is not None:
        t = body["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise _invalid_type("temperature", "a decimal", t)
        if t > 2:
            raise Reject(400, openai_error(f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
                                           f"but got {t} instead.", param="temperature", code="decimal_above_max_value"))
        if t < 0:
            raise Reject(400, openai_error(f"Invalid 'temperature': decimal below minimum value. Expected a value >= 0, "
                                           f"but got {t} instead.", param="temperature", code="decimal_below_min_value"))
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise Reject(400, openai_error("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                                       param="stream_options"))


def _check_parts(parts: list, param: str, allowed: tuple) -> None:
    if not parts:
        raise Reject(400, openai_error(f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
                                       "but got an empty array instead.", param=param, code="empty_array"))
    for j, part in enumerate(parts):
        pp = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _invalid_type(pp, "an object", part)
        if "type" not in part:
            raise _missing(f"{pp}.type")
        ptype = part["type"]
        if ptype not in allowed:
            raise _invalid_value(ptype, allowed, f"{pp}.type")
        if ptype == "text" and not isinstance(part.get("text"), str):
            raise _missing(f"{pp}.text")
        if ptype == "refusal" and not isinstance(part.get("refusal"), str):
            raise _missing(f"{pp}.refusal")
        if ptype == "image_url":
            iu = part.get("image_url")
            if not isinstance(iu, dict) or not isinstance(iu.get("url"), str):
                raise _missing(f"{pp}.image_url.url")


# ---- the server ------------------------------------------------------------------------------


class MockProviderServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    # Bursts of new connections from Envoy's workers (socketserver's default backlog is 5).
    request_queue_size = 128

    def __init__(self, server_address, name: str, quiet: bool = False, api: str = "anthropic", options=None):
        self.name = name
        self.quiet = quiet
        self.api = api
        self.options = normalize_options(api, dict(options or {}))
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.fault: dict = {"mode": "none"}
        self.answer_defaults = answer_from_options(self.options)
        self.answer: dict = dict(self.answer_defaults)
        self.requests: list[dict] = []
        self._conns: set[socket.socket] = set()
        super().__init__(server_address, MockProviderHandler)

    # ---- state -------------------------------------------------------------
    def set_fault(self, fault: dict) -> None:
        with self.lock:
            self.fault = dict(fault)

    def take_fault(self) -> dict:
        """Return the fault applying to this request, consuming one unit of `count`."""
        with self.lock:
            fault = dict(self.fault)
            count = fault.get("count")
            if count is not None:
                if count <= 1:
                    self.fault = {"mode": "none"}
                else:
                    self.fault["count"] = count - 1
            return fault

    def set_answer(self, data: dict) -> dict:
        """Merge `data` (fields of POST /_control/answer) into the answer setting; returns the whole
        setting. Raises ValueError (setting unchanged) when invalid."""
        with self.lock:
            self.answer = validate_answer(data, self.answer)
            return dict(self.answer)

    def answer_setting(self) -> dict:
        with self.lock:
            return dict(self.answer)

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def reset_state(self) -> None:
        with self.lock:
            self.requests.clear()
            self.fault = {"mode": "none"}
            self.answer = dict(self.answer_defaults)

    def snapshot_requests(self) -> list:
        with self.lock:
            return list(self.requests)

    # ---- connection tracking (so shutdown also kills keep-alive conns) -----
    def track(self, conn: socket.socket) -> None:
        with self.lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self.lock:
            self._conns.discard(conn)

    def shutdown(self) -> None:
        """Stop serving, close the listening socket and every open connection.

        Wakes up handlers that are hanging / sleeping, so this returns quickly.
        """
        self.stop_event.set()
        super().shutdown()
        self.server_close()
        with self.lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # client disconnects
            return
        super().handle_error(request, client_address)


@dataclass
class Call:
    """One API request, once routed: what the URL and body ask for."""

    model: object = None
    stream: bool = False
    route: dict = field(default_factory=dict)
    answer: dict = field(default_factory=lambda: dict(ANSWER_DEFAULTS))  # the setting when it came
    continuation: str | None = None  # "prefill" | "instruction" | None (see continuation_of)
    prefix: str = ""  # the part of the configured text the continuation request already has


class MockProviderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server_version = "mock-provider/1.0"
    sys_version = ""
    server: MockProviderServer

    # ---- lifecycle ---------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self._aborted = False
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        if self._aborted:
            return
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True
        except OSError:
            self.close_connection = True
        except ValueError:
            # I/O on a closed file after an abort is expected; anything else is a bug.
            self.close_connection = True
            if not self._aborted:
                raise

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass

    def _log(self, msg: str) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"[mock {self.server.name}] {msg}\n")
            sys.stderr.flush()

    @property
    def api(self) -> str:
        return self.server.api

    @property
    def opts(self) -> dict:
        return self.server.options

    # ---- body reading ------------------------------------------------------
    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.rfile.read(n - len(buf))
            if not chunk:
                raise BadRequest("unexpected EOF while reading body")
            buf += chunk
        return bytes(buf)

    def read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise BadRequest("unexpected EOF in chunked body")
                size_str = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_str, 16)
                except ValueError:
                    raise BadRequest("invalid chunk size") from None
                if size == 0:
                    # trailers until empty line
                    while True:
                        trailer = self.rfile.readline(65537)
                        if not trailer or trailer in (b"\r\n", b"\n"):
                            break
                    break
                if len(body) + size > _MAX_BODY:
                    raise BadRequest("body too large")
                body += self._read_exact(size)
                crlf = self.rfile.readline(65537)
                if crlf not in (b"\r\n", b"\n"):
                    raise BadRequest("missing CRLF after chunk")
            return bytes(body)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if n < 0 or n > _MAX_BODY:
            raise BadRequest("invalid Content-Length")
        return self._read_exact(n)

    # ---- response helpers --------------------------------------------------
    def api_headers(self) -> dict:
        """Per-API request-id headers, on every answer."""
        if self.api == "bedrock":
            return {"x-amzn-requestid": str(uuid.uuid4())}
        if self.api == "openai":
            return {"x-request-id": _new_req_id(), "openai-processing-ms": "7"}
        if self.api == "azure":
            return {"apim-request-id": str(uuid.uuid4()), "x-request-id": str(uuid.uuid4())}
        if self.api == "vertex":
            return {}
        return {"request-id": _new_req_id()}

    def _send_bytes(self, status: int, body: bytes, content_type: str, extra_headers=None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for k, v in {**self.api_headers(), **(extra_headers or {})}.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, obj, extra_headers=None) -> None:
        self._send_bytes(status, json.dumps(obj).encode(), "application/json", extra_headers)

    def send_error_json(self, status: int, err_type: str, message: str, extra_headers=None) -> None:
        self.send_json(status, anthropic_error(err_type, message), extra_headers)

    def send_reject(self, r: Reject) -> None:
        self.send_json(r.status, r.body, r.headers)

    def start_chunked(self, status: int = 200, content_type: str = "text/event-stream", extra_headers=None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        for k, v in {**self.api_headers(), **(extra_headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        if not data:
            return
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _sleep(self, ms) -> bool:
        """Interruptible sleep; returns True if the server is shutting down."""
        if not ms:
            return self.server.stop_event.is_set()
        return self.server.stop_event.wait(ms / 1000.0)

    def send_chunks(self, chunks: list[bytes], chunk_delay_ms=0, content_type=None, extra_headers=None) -> None:
        """A chunked 200 answer, one HTTP chunk per item, `chunk_delay_ms` apart."""
        self.start_chunked(content_type=content_type or self.stream_content_type(), extra_headers=extra_headers)
        for i, data in enumerate(chunks):
            if i and chunk_delay_ms:
                if self._sleep(chunk_delay_ms):
                    self.close_connection = True
                    return  # shutting down: leave the body unterminated
            self.write_chunk(data)
        self.end_chunked()

    def stream_content_type(self) -> str:
        if self.api == "bedrock":
            return "application/vnd.amazon.eventstream"
        if self.api in ("openai", "azure"):
            return "text/event-stream; charset=utf-8"
        return "text/event-stream"

    def abort_with_rst(self) -> None:
        """Close the socket abruptly with a TCP RST, without sending anything."""
        self._aborted = True
        self.close_connection = True
        conn = self.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # makefile() objects hold references; close them so close() really closes the fd.
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        try:
            conn.close()
        except OSError:
            pass

    # ---- routing -----------------------------------------------------------
    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _query(self) -> dict:
        q = self.path.split("?", 1)[1] if "?" in self.path else ""
        return dict(urllib.parse.parse_qsl(q, keep_blank_values=True))

    def do_GET(self) -> None:
        path = self._path()
        if path == "/_control/health":
            self.send_json(200, {"ok": True, "name": self.server.name})
        elif path == "/_control/info":
            self.send_json(200, {"name": self.server.name, "api": self.api, "options": self.opts})
        elif path == "/_control/requests":
            self.send_json(200, self.server.snapshot_requests())
        elif path == "/_control/fault":
            with self.server.lock:
                fault = dict(self.server.fault)
            self.send_json(200, fault)
        elif path == "/_control/answer":
            self.send_json(200, self.server.answer_setting())
        elif path == "/v1/messages" and self.api == "anthropic":
            self.send_error_json(405, "invalid_request_error", "Method not allowed")
        else:
            self.send_reject(self.not_found(path))

    def do_POST(self) -> None:
        path = self._path()
        try:
            raw = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.send_reject(self.bad_request(str(e)))
            return

        if path == "/_control/fault":
            try:
                fault = validate_fault(json.loads(raw or b"null"))
            except (ValueError, json.JSONDecodeError) as e:
                self.send_json(400, {"ok": False, "error": str(e)})
                return
            self.server.set_fault(fault)
            self._log(f"fault set: {fault}")
            self.send_json(200, fault)
        elif path == "/_control/answer":
            try:
                answer = self.server.set_answer(json.loads(raw or b"null"))
            except (ValueError, json.JSONDecodeError) as e:
                self.send_json(400, {"ok": False, "error": str(e)})
                return
            self._log(f"answer set: {answer}")
            self.send_json(200, answer)
        elif path == "/_control/reset":
            self.server.reset_state()
            self.send_json(200, {"ok": True})
        else:
            self.handle_api(path, raw)

    # ---- per-API errors ----------------------------------------------------
    def bad_request(self, message: str) -> Reject:
        if self.api == "bedrock":
            return bedrock_reject(400, "ValidationException", message)
        if self.api in ("openai", "azure"):
            return Reject(400, openai_error(message))
        return Reject(400, anthropic_error("invalid_request_error", message))

    def not_found(self, path: str) -> Reject:
        if self.api == "vertex":
            return Reject(404, google_error(404, "NOT_FOUND", f"The requested URL {path} was not found on this server."))
        if self.api == "bedrock":
            return Reject(404, {"message": "Not Found"}, {"x-amzn-ErrorType": "UnknownOperationException"})
        if self.api == "openai":
            return Reject(404, openai_error(f"Invalid URL ({self.command} {path})"))
        if self.api == "azure":
            return Reject(404, azure_error("404", "Resource not found"))
        return Reject(404, anthropic_error("not_found_error", f"Not found: {path}"))

    def context_overflow(self) -> Reject:
        """The 400 of a prompt longer than the model's context, in this API's shape."""
        if self.api == "bedrock":
            return bedrock_reject(400, "ValidationException", BEDROCK_TOO_LONG)
        if self.api in ("openai", "azure"):
            return Reject(400, openai_error(OPENAI_TOO_LONG, param="messages", code="context_length_exceeded"))
        return Reject(400, anthropic_error("invalid_request_error", ANTHROPIC_TOO_LONG))

    def fault_reject(self, mode: str, fault: dict, call: Call) -> Reject | None:
        """The error answer of a status fault mode, in this API's shape (None: not a status mode)."""
        api = self.api
        if mode == "context_overflow":
            return self.context_overflow()
        retry = {}
        if mode == "429":
            ra = fault.get("retry_after", 2)
            if ra is not None:
                if isinstance(ra, float) and ra.is_integer():
                    ra = int(ra)
                retry["retry-after"] = str(ra)
        if mode == "529" and api not in ("anthropic", "vertex"):
            mode = "503"
        if api == "anthropic":
            table = {
                "500": (500, "api_error", "Internal server error"),
                "529": (529, "overloaded_error", "Overloaded"),
                "429": (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit."),
            }
            if mode in table:
                status, t, m = table[mode]
                return Reject(status, anthropic_error(t, m), retry)
            if mode in CLIENT_ERRORS:
                t, m = CLIENT_ERRORS[mode]
                return Reject(int(mode), anthropic_error(t, m))
            return None  # 503: plain text, see apply_fault
        if api == "vertex":
            table = {
                "500": (500, "INTERNAL", "Internal error encountered."),
                "503": (503, "UNAVAILABLE", "The service is currently unavailable."),
                "429": (429, "RESOURCE_EXHAUSTED",
                        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
                        "with base model: anthropic-claude. Please submit a quota increase request."),
                "400": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
                "401": (401, "UNAUTHENTICATED", GOOGLE_AUTH_INVALID),
                "403": (403, "PERMISSION_DENIED",
                        "Permission 'aiplatform.endpoints.predict' denied on resource (or it may not exist)."),
                "404": (404, "NOT_FOUND", f"Publisher Model `{self._vertex_model_name(call)}` not found."),
            }
            if mode == "529":
                return Reject(529, anthropic_error("overloaded_error", "Overloaded"))
            if mode == "413":
                return Reject(413, anthropic_error("request_too_large", CLIENT_ERRORS["413"][1]))
            if mode in table:
                status, s, m = table[mode]
                return Reject(status, google_error(status, s, m), retry)
            return None
        if api == "bedrock":
            table = {
                "500": (500, "InternalServerException", BEDROCK_STREAM_EXCEPTIONS["internalServerException"]),
                "503": (503, "ServiceUnavailableException", "Bedrock is unable to process your request."),
                "429": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
                "400": (400, "ValidationException", "Malformed input request, please reformat your input and try again."),
                "401": (401, "UnrecognizedClientException", "The security token included in the request is invalid."),
                "403": (403, "AccessDeniedException", "You don't have access to the model with the specified model ID."),
                "404": (404, "ResourceNotFoundException", BEDROCK_NO_MODEL),
                "413": (413, "ValidationException", "Input is too long for requested model."),
            }
            if mode in table:
                status, e, m = table[mode]
                r = bedrock_reject(status, e, m)
                r.headers.update(retry)
                return r
            return None
        # openai, azure
        if api == "azure" and mode in ("429", "401", "403", "404"):
            table = {
                "429": ("429", f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                               f"{call.route.get('api_version')} have exceeded token rate limit of your current "
                               f"OpenAI S0 pricing tier. Please retry after {retry.get('retry-after', 2)} seconds."),
                "401": ("401", AZURE_KEY_DENIED),
                "403": ("403", "Public access is disabled. Please configure private endpoint."),
                "404": ("DeploymentNotFound", AZURE_NO_DEPLOYMENT),
            }
            c, m = table[mode]
            return Reject(int(mode), azure_error(c, m), retry)
        table = {
            "500": (500, openai_error("The server had an error while processing your request. Sorry about that!",
                                      "server_error")),
            "503": (503, openai_error("The engine is currently overloaded, please try again later.", "server_error")),
            "429": (429, openai_error(f"Rate limit reached for {call.model} on requests per min (RPM): Limit 500, "
                                      "Used 500, Requested 1. Please try again in 2s.",
                                      "requests", "requests", "rate_limit_exceeded")),
            "400": (400, openai_error("We could not parse the JSON body of your request.")),
            "401": (401, openai_error("Incorrect API key provided. You can find your API key at "
                                      "https://platform.openai.com/account/api-keys.", code="invalid_api_key")),
            "403": (403, openai_error("Country, region, or territory not supported", "request_forbidden",
                                      code="unsupported_country_region_territory")),
            "404": (404, openai_error(f"The model `{call.model}` does not exist or you do not have access to it.",
                                      code="model_not_found")),
            "413": (413, openai_error("Request too large.", code="request_too_large")),
        }
        if mode in table:
            status, body = table[mode]
            return Reject(status, body, retry)
        return None

    def _vertex_model_name(self, call: Call) -> str:
        r = call.route
        return f"projects/{r.get('project')}/locations/{r.get('region')}/publishers/{r.get('publisher')}/models/{call.model}"

    # ---- routes ------------------------------------------------------------
    def resolve(self, path: str, query: dict) -> Call:
        """Routes the URL for this API; raises Reject (404 etc.)."""
        api = self.api
        if api == "anthropic":
            if path != "/v1/messages":
                raise self.not_found(path)
            return Call()
        if api == "vertex":
            m = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/([^/]+)/models/([^/:]+):([A-Za-z]+)", path)
            if not m:
                raise self.not_found(path)
            project, region, publisher, model, verb = (urllib.parse.unquote(g) for g in m.groups())
            call = Call(model=model, stream=verb == "streamRawPredict",
                        route={"project": project, "region": region, "publisher": publisher, "verb": verb})
            return call  # the rest is checked after the credential, see check_route
        if api == "bedrock":
            m = re.fullmatch(r"/model/([^/]+)/(invoke|invoke-with-response-stream)", path)
            if not m:
                raise self.not_found(path)
            model = urllib.parse.unquote(m.group(1))
            call = Call(model=model, stream=m.group(2) == "invoke-with-response-stream",
                        route={"model_id": model, "operation": m.group(2)})
            return call
        if api == "openai":
            if path != "/v1/chat/completions":
                raise self.not_found(path)
            return Call()
        # azure
        m = re.fullmatch(r"/openai/deployments/([^/]+)/chat/completions", path)
        if not m:
            raise self.not_found(path)
        dep = urllib.parse.unquote(m.group(1))
        version = query.get("api-version")
        call = Call(model=dep, route={"deployment": dep, "api_version": version})
        if version is None:
            raise Reject(404, azure_error("404", "Resource not found"))
        vm = AZURE_API_VERSION.fullmatch(version)
        if not vm or version[:10] < AZURE_MIN_API_VERSION:
            raise Reject(400, azure_error("BadRequest", "API version not supported"))
        return call

    def check_route(self, call: Call, path: str) -> None:
        """Vertex: the project, region, publisher, model and verb of the URL (Google answers 404)."""
        if self.api != "vertex":
            return
        o, r = self.opts, call.route
        name = self._vertex_model_name(call)
        if r["verb"] not in ("rawPredict", "streamRawPredict"):
            raise Reject(404, google_error(404, "NOT_FOUND", f"The requested URL {path} was not found on this server."))
        if r["project"] != o["project"]:
            raise Reject(404, google_error(404, "NOT_FOUND", f"Project '{r['project']}' not found or permission denied."))
        models = o["models"]
        if (r["region"] != o["region"] or r["publisher"] != "anthropic"
                or (models is not None and call.model not in models)
                or (models is None and not str(call.model).startswith("claude"))):
            raise Reject(404, google_error(404, "NOT_FOUND", f"Publisher Model `{name}` not found."))

    def check_auth(self, call: Call, cred: dict) -> None:
        """Raises Reject when the credential the real host needs is missing or refused."""
        api, o = self.api, self.opts
        keys = o["keys"]
        if api == "anthropic" or not o["strict"]:
            if api == "anthropic" and keys is not None:
                given = cred.get("x-api-key") or (cred.get("authorization") or "").removeprefix("Bearer ")
                if given not in keys:
                    raise Reject(401, anthropic_error("authentication_error", "invalid x-api-key"))
            return
        auth = cred.get("authorization") or ""
        bearer = auth[7:].strip() if auth.startswith("Bearer ") else None
        if api == "vertex":
            if not auth:
                raise Reject(401, google_error(401, "UNAUTHENTICATED", GOOGLE_AUTH_MISSING))
            if not bearer or (keys is not None and bearer not in keys):
                raise Reject(401, google_error(401, "UNAUTHENTICATED", GOOGLE_AUTH_INVALID))
        elif api == "bedrock":
            if not auth:
                raise bedrock_reject(403, "AccessDeniedException", "Authorization header is missing. "
                                     "Use an Amazon Bedrock API key: Authorization: Bearer <key>.")
            if not bearer or (keys is not None and bearer not in keys):
                raise bedrock_reject(403, "AccessDeniedException",
                                     "Authentication failed: Please make sure your API Key is valid.")
        elif api == "openai":
            if not auth:
                raise Reject(401, openai_error(OPENAI_NO_KEY, code="invalid_api_key"))
            if not bearer or not bearer.startswith("sk-") or (keys is not None and bearer not in keys):
                shown = (bearer or auth)[:4] + "*" * 8
                raise Reject(401, openai_error(f"Incorrect API key provided: {shown}. You can find your API key at "
                                               "https://platform.openai.com/account/api-keys.", code="invalid_api_key"))
        elif api == "azure":
            key = cred.get("api-key")
            if not key or (keys is not None and key not in keys):
                raise Reject(401, azure_error("401", AZURE_KEY_DENIED))

    def validate(self, call: Call, body) -> None:
        """Body checks; fills call.model / call.stream. Raises Reject."""
        api, strict = self.api, self.opts["strict"]
        if not isinstance(body, dict):
            raise self.bad_request("request body must be a JSON object")
        if api == "anthropic":
            call.model, call.stream = body.get("model"), bool(body.get("stream"))
            missing = [k for k in ("model", "messages", "max_tokens") if k not in body]
            if missing:
                raise self.bad_request(f"{missing[0]}: Field required")
            if not isinstance(call.model, str):
                raise self.bad_request("model: Input should be a valid string")
            if not isinstance(body["messages"], list):
                raise self.bad_request("messages: Input should be a valid list")
            if isinstance(body["max_tokens"], bool) or not isinstance(body["max_tokens"], int):
                raise self.bad_request("max_tokens: Input should be a valid integer")
            if strict:
                for k in body:
                    if k not in ANTHROPIC_PARAMS:
                        raise self.bad_request(f"{k}: Extra inputs are not permitted")
                problem = anthropic_messages_problem(body)
                if problem:
                    raise self.bad_request(problem)
            return
        if api == "vertex":
            if strict:
                if "model" in body:
                    raise self.bad_request("model: Extra inputs are not permitted (on Vertex AI the model is in the URL)")
                if "anthropic_version" not in body:
                    raise self.bad_request("anthropic_version: Field required")
                if body["anthropic_version"] != VERTEX_VERSION:
                    raise self.bad_request(f"anthropic_version: Input should be '{VERTEX_VERSION}'")
                if call.stream and body.get("stream") is not True:
                    raise self.bad_request("stream: must be true for :streamRawPredict")
                if not call.stream and body.get("stream") not in (None, False):
                    raise self.bad_request("stream: streaming requests must use :streamRawPredict, not :rawPredict")
            self._anthropic_common(body, VERTEX_PARAMS, strict)
            return
        if api == "bedrock":
            models = self.opts["models"]
            if (models is not None and call.model not in models) or (
                    models is None and strict and "anthropic.claude" not in call.model):
                raise bedrock_reject(404, "ResourceNotFoundException", BEDROCK_NO_MODEL)
            if strict:
                for k in ("model", "stream"):
                    if k in body:
                        raise _bedrock_malformed(f"extraneous key [{k}] is not permitted")
                if "anthropic_version" not in body:
                    raise _bedrock_malformed("required key [anthropic_version] not found")
                if body["anthropic_version"] != BEDROCK_VERSION:
                    raise bedrock_reject(400, "ValidationException", "Invalid API version")
                for k in body:
                    if k not in BEDROCK_PARAMS:
                        raise _bedrock_malformed(f"extraneous key [{k}] is not permitted")
                problem = self._anthropic_required(body) or anthropic_messages_problem(body)
                if problem:
                    raise bedrock_reject(400, "ValidationException", problem)
            return
        # openai, azure
        call.stream = body.get("stream") is True
        if api == "openai":
            call.model = body.get("model")
            if strict:
                openai_validate(body, OPENAI_PARAMS)
            elif not isinstance(call.model, str) or not isinstance(body.get("messages"), list):
                raise self.bad_request("you must provide a model parameter" if not isinstance(call.model, str)
                                       else "Missing required parameter: 'messages'.")
            return
        deps = self.opts["deployments"]
        dep = call.route["deployment"]
        if dep not in deps:
            raise Reject(404, azure_error("DeploymentNotFound", AZURE_NO_DEPLOYMENT))
        call.model = deps[dep]
        if strict:
            openai_validate(body, AZURE_PARAMS, model_required=False)

    @staticmethod
    def _anthropic_required(body: dict) -> str | None:
        for k in ("messages", "max_tokens"):
            if k not in body:
                return f"{k}: Field required"
        if isinstance(body["max_tokens"], bool) or not isinstance(body["max_tokens"], int):
            return "max_tokens: Input should be a valid integer"
        return None

    def _anthropic_common(self, body: dict, allowed, strict: bool) -> None:
        problem = self._anthropic_required(body)
        if problem is None and strict:
            extra = [k for k in body if k not in allowed]
            problem = f"{extra[0]}: Extra inputs are not permitted" if extra else anthropic_messages_problem(body)
        if problem:
            raise self.bad_request(problem)

    # ---- the API request ---------------------------------------------------
    def handle_api(self, path: str, raw: bytes) -> None:
        query = self._query()
        body = None
        parse_error = None
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            parse_error = "invalid JSON in request body"

        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            lk = k.lower()
            headers[lk] = f"{headers[lk]}, {v}" if lk in headers else v
        cred = {k: headers[k] for k in ("authorization", "x-api-key", "api-key", "x-goog-api-key") if k in headers}

        call = Call()
        reject = None
        try:
            call = self.resolve(path, query)
        except Reject as r:
            reject = r
        call.answer = self.server.answer_setting()
        call.continuation, call.prefix = continuation_of(body, call.answer["text"])
        if isinstance(body, dict):
            if self.api in ("anthropic", "openai"):
                call.model = body.get("model")
            if self.api in ("anthropic", "openai", "azure"):
                call.stream = bool(body.get("stream"))
        self.server.record(
            {
                "api": self.api,
                "path": self.path,
                "method": self.command,
                "query": query,
                "route": call.route,
                "headers": headers,
                "credential": cred,
                "model": call.model,
                "stream": call.stream,
                "body": body if isinstance(body, (dict, list)) else None,
                "continuation": call.continuation,
                "time": time.time(),
            }
        )
        try:
            if reject is not None:
                raise reject
            self.check_auth(call, cred)
            self.check_route(call, path)
            if parse_error is not None:
                raise self.bad_request(parse_error)
            self.validate(call, body)
            self.check_answer_limits(call, body)
        except Reject as r:
            self._log(f"POST {path} -> {r.status} ({r.body})")
            self.send_reject(r)
            return

        fault = self.server.take_fault()
        mode = fault.get("mode", "none")
        self._log(f"POST {path} api={self.api} model={call.model} stream={call.stream} mode={mode}")
        self.apply_fault(mode, fault, call, body)

    def check_answer_limits(self, call: Call, body) -> None:
        """The checks of the answer setting, after the body checks: reject_prefill (Anthropic-shaped
        APIs: a conversation ending with an assistant message), max_prompt_chars. Raises Reject."""
        msgs = body.get("messages")
        if (call.answer["reject_prefill"] and self.api in ("anthropic", "vertex", "bedrock")
                and isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict)
                and msgs[-1].get("role") == "assistant"):
            raise self.bad_request(PREFILL_UNSUPPORTED)
        limit = call.answer["max_prompt_chars"]
        if limit is not None and prompt_chars(body) > limit:
            raise self.context_overflow()

    # ---- answers -----------------------------------------------------------
    def plan(self, call: Call, body) -> Plan:
        text = call.answer["text"]
        if text is not None and call.continuation:
            return text_plan(text if call.answer["continuation"] == "start_over" else text[len(call.prefix):])
        normal = text_plan(text) if text is not None else None
        if self.api in ("openai", "azure"):
            return openai_plan(body, self.server.name, normal)
        return anthropic_plan(body, self.server.name, normal)

    def _id_prefix(self) -> str:
        return {"vertex": "msg_vrtx_", "bedrock": "msg_bdrk_"}.get(self.api, "msg_")

    def full_json(self, call: Call, body) -> dict:
        plan = self.plan(call, body)
        if self.api in ("openai", "azure"):
            return openai_completion(call.model, plan, azure=self.api == "azure")
        return anthropic_message(call.model, plan, self._id_prefix())

    def _bedrock_events(self, call: Call, body, partial=False) -> list[dict]:
        plan = self.plan(call, body)
        events = [data for _name, data in anthropic_events(call.model, plan, self._id_prefix(), partial)]
        if not partial:
            events[-1]["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": INPUT_TOKENS, "outputTokenCount": plan.tokens,
                "invocationLatency": 321, "firstByteLatency": 123,
            }
        return events

    def _frame_split(self, fault: dict) -> str:
        return fault.get("frame_split") or self.opts.get("frame_split") or "mixed"

    def stream_chunks(self, call: Call, body, fault: dict, partial: bool = False) -> list[bytes]:
        """The HTTP chunks of a streamed answer (`partial`: its start only, no terminal event)."""
        if self.api in ("openai", "azure"):
            so = body.get("stream_options") if isinstance(body, dict) else None
            usage = isinstance(so, dict) and so.get("include_usage") is True
            chunks = [sse_data(c) for c in openai_chunks(call.model, self.plan(call, body), usage, partial)]
            return chunks if partial else chunks + [b"data: [DONE]\n\n"]
        if self.api == "bedrock":
            frames = [bedrock_chunk_frame(e, i) for i, e in enumerate(self._bedrock_events(call, body, partial))]
            return split_frames(frames, self._frame_split(fault))
        events = anthropic_events(call.model, self.plan(call, body), self._id_prefix(), partial)
        return [sse_event(n, d) for n, d in events]

    def stream_units(self, call: Call, body, plan: Plan | None = None) -> tuple[list[bytes], int, int]:
        """The normal stream of an answer as units (one SSE event, OpenAI chunk or event-stream
        frame each, `data: [DONE]` included), how many units precede the first content delta (the
        preamble), and how many content deltas follow it. Same bytes as stream_chunks (before the
        Bedrock frames are mapped onto HTTP chunks, see units_to_chunks)."""
        plan = plan or self.plan(call, body)
        if self.api in ("openai", "azure"):
            so = body.get("stream_options") if isinstance(body, dict) else None
            usage = isinstance(so, dict) and so.get("include_usage") is True
            units = [sse_data(c) for c in openai_chunks(call.model, plan, usage)] + [b"data: [DONE]\n\n"]
            deltas = len(plan.pieces) if plan.kind == "text" else 1 + len(plan.args_pieces)
            return units, 1, deltas
        events = anthropic_events(call.model, plan, self._id_prefix())
        names = [n for n, _ in events]
        pre = names.index("content_block_delta" if "content_block_delta" in names else "content_block_stop")
        deltas = names.count("content_block_delta")
        if self.api == "bedrock":
            datas = [d for _, d in events]
            datas[-1]["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": INPUT_TOKENS, "outputTokenCount": plan.tokens,
                "invocationLatency": 321, "firstByteLatency": 123,
            }
            return [bedrock_chunk_frame(e, i) for i, e in enumerate(datas)], pre, deltas
        return [sse_event(n, d) for n, d in events], pre, deltas

    def units_to_chunks(self, units: list[bytes], fault: dict) -> list[bytes]:
        """HTTP chunks carrying `units`: Bedrock frames as frame_split says, else one chunk each."""
        if self.api == "bedrock":
            return split_frames(units, self._frame_split(fault)) if units else []
        return list(units)

    def plan_past(self, call: Call, body, n: int, long_hello: bool) -> Plan:
        """The answer, with more than `n` content deltas (lengthened if needed; `long_hello`: the
        plain hello answer always becomes LONG_HELLO; a configured text only gets LONG_FILLER)."""
        plan = self.plan(call, body)
        name = self.server.name
        if plan.kind == "text":
            pieces = list(plan.pieces)
            if (plan.output_tokens is None and pieces == ["Hello", " from", " " + name]
                    and (long_hello or len(pieces) <= n)):
                pieces = [p.format(name=name) for p in LONG_HELLO]
            i = 0
            while len(pieces) <= n:
                pieces.append(LONG_FILLER[i % len(LONG_FILLER)])
                i += 1
            return Plan("text", pieces, output_tokens=None if plan.output_tokens is None else len(pieces))
        fixed = 1 if self.api in ("openai", "azure") else 0  # the tool_calls chunk naming the tool
        args = list(plan.args_pieces)
        if fixed + len(args) <= n:
            args = list(plan.args)  # one character each
            pad = n + 1 - fixed - len(args)
            if pad > 0:
                args = [" "] * pad + args  # leading whitespace: still the same JSON
        return Plan("tool", tool_name=plan.tool_name, tool_id=plan.tool_id, args_pieces=args)

    def _stream_headers(self) -> dict | None:
        return {"x-amzn-bedrock-content-type": "application/json"} if self.api == "bedrock" else None

    def wait_client(self, ms) -> bool:
        """Wait `ms` ms; returns True early if the client disconnects or the server shuts down."""
        deadline = time.monotonic() + (ms or 0) / 1000.0
        try:
            sel = selectors.DefaultSelector()
            sel.register(self.connection, selectors.EVENT_READ)
        except (OSError, ValueError):
            return True
        with sel:
            while True:
                if self.server.stop_event.is_set():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not sel.select(min(left, 0.1)):
                    continue
                try:
                    data = self.connection.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                except OSError:
                    return True
                if not data:
                    return True  # EOF: the client went away
                # The client sent more (a pipelined request): wait out the rest.
                return self._sleep(max(0.0, deadline - time.monotonic()) * 1000.0)

    def send_stream(self, parts: list, fault: dict, end: bool = True) -> None:
        """A chunked 200 stream: each part an HTTP chunk (`chunk_delay_ms` apart) or ("wait", ms).
        `end`: finish with the chunked terminator; else close the connection without it. A client
        disconnect or shutdown during a wait stops quietly (body left unterminated)."""
        delay = fault.get("chunk_delay_ms") or 0
        self.start_chunked(content_type=self.stream_content_type(), extra_headers=self._stream_headers())
        sent = False
        for part in parts:
            if isinstance(part, tuple):
                if self.wait_client(part[1]):
                    self.close_connection = True
                    return
                continue
            if sent and delay and self._sleep(delay):
                self.close_connection = True
                return
            self.write_chunk(part)
            sent = True
        if end:
            self.end_chunked()
        else:
            self.close_connection = True

    def bedrock_json_headers(self, doc: dict) -> dict | None:
        """Bedrock's token-count headers of a JSON answer (None for the other APIs)."""
        if self.api != "bedrock":
            return None
        return {
            "x-amzn-bedrock-input-token-count": str(INPUT_TOKENS),
            "x-amzn-bedrock-output-token-count": str(doc["usage"]["output_tokens"]),
            "x-amzn-bedrock-invocation-latency": "321",
        }

    def send_json_late(self, call: Call, body, wait_ms) -> None:
        """The normal JSON answer as one chunk of a chunked body; `wait_ms` before the terminator."""
        doc = self.full_json(call, body)
        data = json.dumps(doc).encode()
        extra = self.bedrock_json_headers(doc)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        for k, v in {**self.api_headers(), **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.write_chunk(data)
        if self.wait_client(wait_ms):
            self.close_connection = True
            return
        self.end_chunked()

    def send_html_error(self, status: int) -> None:
        page = html_error_page(status)
        self.send_response(status, status_reason(status))
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)
        self.wfile.flush()

    def send_normal(self, call: Call, body, fault: dict) -> None:
        delay = fault.get("chunk_delay_ms") or 0
        if call.stream:
            extra = {"x-amzn-bedrock-content-type": "application/json"} if self.api == "bedrock" else None
            self.send_chunks(self.stream_chunks(call, body, fault), delay, extra_headers=extra)
            return
        doc = self.full_json(call, body)
        self.send_json(200, doc, self.bedrock_json_headers(doc))

    def send_overload(self, fault: dict, call: Call) -> None:
        """The non-stream answer of stream_error / error_first: 529 (anthropic, vertex) or 503."""
        overload = "529" if self.api in ("anthropic", "vertex") else "503"
        r = self.fault_reject(overload, fault, call)
        if r is None:
            self._send_bytes(503, b"upstream unavailable", "text/plain")
        else:
            self.send_reject(r)

    def send_truncated_json(self, call: Call, body) -> None:
        """The non-stream answer of truncate / truncate_after: half the JSON body, then close."""
        full = json.dumps(self.full_json(call, body)).encode()
        self.close_connection = True
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(full)))
        for k, v in self.api_headers().items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(full[: len(full) // 2])
        self.wfile.flush()

    def stream_error_event(self, fault: dict) -> bytes:
        """The overload error of a stream, as this API streams it (one SSE event or one frame)."""
        if self.api == "bedrock":
            exc = fault.get("exception") or "throttlingException"
            return bedrock_exception_frame(exc, BEDROCK_STREAM_EXCEPTIONS[exc])
        if self.api in ("openai", "azure"):
            return sse_data({"error": {"message": "The server is overloaded", "type": "server_error",
                                       "param": None, "code": None}})
        return sse_event("error", anthropic_error("overloaded_error", "Overloaded"))

    def apply_fault(self, mode: str, fault: dict, call: Call, body) -> None:
        delay = fault.get("chunk_delay_ms") or 0
        if mode == "none":
            self.send_normal(call, body, fault)
            return
        reject = self.fault_reject(mode, fault, call)
        if reject is not None:
            self.send_reject(reject)

        elif mode == "503":  # anthropic: a proxy's plain-text 503
            self._send_bytes(503, b"upstream unavailable", "text/plain")

        elif mode == "hang" or (mode == "stall" and not call.stream):
            self.close_connection = True
            self._sleep(fault_param(fault, "hang_ms"))
            # then just close (FIN) without a response

        elif mode == "reset":
            self.abort_with_rst()

        elif mode in ("stream_error", "error_first") and not call.stream:
            self.send_overload(fault, call)

        elif mode == "stream_error" and fault.get("after_deltas") is not None:
            n = int(fault["after_deltas"])
            units, pre, _ = self.stream_units(call, body, self.plan_past(call, body, n, long_hello=False))
            self.send_stream(self.units_to_chunks([*units[:pre + n], self.stream_error_event(fault)], fault), fault)

        elif mode == "stream_error":
            if self.api == "bedrock":
                frames = [bedrock_chunk_frame(e, i) for i, e in enumerate(self._bedrock_events(call, body, partial=True))]
                frames.append(self.stream_error_event(fault))
                chunks = split_frames(frames, self._frame_split(fault))
            else:
                chunks = self.stream_chunks(call, body, fault, partial=True)
                chunks.append(self.stream_error_event(fault))
            self.send_chunks(chunks, delay)

        elif mode in ("truncate", "truncate_after") and not call.stream:
            self.send_truncated_json(call, body)

        elif mode == "truncate":
            if self.api == "bedrock":
                frames = [bedrock_chunk_frame(e, i) for i, e in enumerate(self._bedrock_events(call, body))]
                data = b"".join(frames[:3]) + frames[3][: len(frames[3]) // 2]  # cut mid-frame
                chunks = [data[: len(data) // 2], data[len(data) // 2:]]
            else:
                chunks = self.stream_chunks(call, body, fault, partial=True)
            self.send_chunks(chunks, delay)

        elif mode == "slow_first_byte":
            if self._sleep(fault.get("delay_ms", 2000)):
                self.close_connection = True
                return
            self.send_normal(call, body, fault)

        elif mode == "garbage":
            rng = random.Random()
            if call.stream:
                self.start_chunked(content_type=self.stream_content_type())
                self.write_chunk(bytes(rng.getrandbits(8) for _ in range(256)))
                self.write_chunk(b"\xff\xfe\xfd\xc3\x28\xa0\xa1\xe2\x28\xa1\n")
                if self.api == "bedrock":
                    bad = bytearray(bedrock_chunk_frame({"type": "ping"}, 0))
                    bad[-1] ^= 0xFF  # wrong message CRC
                    self.write_chunk(bytes(bad))
                    self.write_chunk(b"\x7f\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00")  # absurd length
                else:
                    self.write_chunk(b"data:\n\ndata:\n\n")
                    self.write_chunk(b"event: content_block_delta\ndata: {not json\n\n")
                    self.write_chunk(b"data: \x00\x01\x02\xff\n\n")
                self.write_chunk(bytes(rng.choice(b"ABCDEFGHabcdefgh0123456789{}[]:,\"") for _ in range(100 * 1024)))
                self.end_chunked()
            else:
                junk = b'{"id": "msg_\xff\xfe, "type": message, [[[' + os.urandom(64)
                self._send_bytes(200, junk, "application/json")

        elif mode == "slow_first_token":
            wait = fault_param(fault, "delay_ms")
            if not call.stream:
                if self.wait_client(wait):
                    self.close_connection = True
                    return
                self.send_normal(call, body, fault)
                return
            units, pre, _ = self.stream_units(call, body)
            self.send_stream([*self.units_to_chunks(units[:pre], fault), ("wait", wait),
                              *self.units_to_chunks(units[pre:], fault)], fault)

        elif mode == "stall":  # stream (non-stream: hang, above)
            n = int(fault_param(fault, "after_deltas"))
            units, pre, _ = self.stream_units(call, body, self.plan_past(call, body, n, long_hello=True))
            self.send_stream([*self.units_to_chunks(units[:pre + n], fault), ("wait", fault_param(fault, "hang_ms"))],
                             fault, end=False)

        elif mode == "late_end":
            wait = fault_param(fault, "delay_ms")
            if not call.stream:
                self.send_json_late(call, body, wait)
                return
            units, _, _ = self.stream_units(call, body)
            self.send_stream([*self.units_to_chunks(units, fault), ("wait", wait)], fault)

        elif mode == "no_done":
            if not call.stream or self.api not in ("openai", "azure"):
                self.send_normal(call, body, fault)
                return
            units, _, _ = self.stream_units(call, body)
            self.send_stream(self.units_to_chunks(units[:-1], fault), fault)

        elif mode == "error_first":  # stream (non-stream: above)
            self.send_stream(self.units_to_chunks([self.stream_error_event(fault)], fault), fault)

        elif mode == "html_error":
            self.send_html_error(int(fault_param(fault, "status")))

        elif mode == "truncate_after":  # stream (non-stream: above)
            n = int(fault_param(fault, "after_deltas"))
            units, pre, _ = self.stream_units(call, body, self.plan_past(call, body, n, long_hello=False))
            self.send_stream(self.units_to_chunks(units[:pre + n], fault), fault)

        else:  # should not happen: validated on set
            self.send_error_json(500, "api_error", f"unknown fault mode {mode!r}")


def make_server(name: str, port: int = 0, host: str = "127.0.0.1", quiet: bool = True, api: str = "anthropic",
                **options) -> MockProviderServer:
    """A mock provider speaking `api` (one of APIS); `options` as in the module docstring."""
    return MockProviderServer((host, port), name=name, quiet=quiet, api=api, options=options)


def start_mock(name: str, port: int = 0, host: str = "127.0.0.1", quiet: bool = True, api: str = "anthropic",
               **options):
    """Start a mock provider in a daemon thread. Returns (server, port).

    Stop it with ``server.shutdown()``.
    """
    server = make_server(name, port, host, quiet, api, **options)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"mock-{name}", daemon=True)
    t.start()
    server.thread = t
    return server, server.server_address[1]


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Mock LLM provider (Anthropic, Vertex, Bedrock, OpenAI, Azure) with fault injection")
    ap.add_argument("--port", type=int, default=18101)
    ap.add_argument("--name", default="primary")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--api", default="anthropic", choices=APIS)
    ap.add_argument("--no-strict", action="store_true", help="skip credential and schema checks")
    ap.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                    help="API option, VALUE as JSON (or a plain string), e.g. project=my-proj, models='[\"a\"]'")
    ap.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    args = ap.parse_args(argv)

    options = dict(args.option)
    if args.no_strict:
        options["strict"] = False
    try:
        server = make_server(args.name, args.port, args.host, quiet=args.quiet, api=args.api, **options)
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    port = server.server_address[1]
    print(f"mock provider {args.name} listening on http://{args.host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop_event.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
