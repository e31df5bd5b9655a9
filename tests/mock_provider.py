#!/usr/bin/env python3
"""Mock LLM provider speaking the Anthropic Messages API wire format, with fault injection.

Standard library only.

CLI:
    python tests/mock_provider.py --port 18101 --name primary [--host 127.0.0.1] [--quiet]

Prints ``mock provider <name> listening on http://HOST:PORT`` (flushed) once listening.

Library:
    server, port = start_mock("primary", port=0)
    ...
    server.shutdown()   # stops serving, closes the listener and all open connections

Endpoints:
    POST /v1/messages          Anthropic Messages API (non-stream and SSE stream), faultable
    GET  /_control/health      {"ok": true, "name": ...}
    POST /_control/fault       {"mode": M, ...params} -> echo; invalid -> 400
    GET  /_control/fault       current fault (with remaining count)
    GET  /_control/requests    recorded requests
    POST /_control/reset       clear recorded requests, fault = none

Fault modes: none, 500, 529, 429, 503, hang, reset, stream_error, truncate,
slow_first_byte, garbage. Params: count, retry_after, hang_ms, delay_ms, chunk_delay_ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
)

# Numeric fault params: name -> (default, allow_null)
_NUMERIC_PARAMS = {
    "count": (None, True),
    "retry_after": (2, True),
    "hang_ms": (60000, False),
    "delay_ms": (2000, False),
    "chunk_delay_ms": (0, False),
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

_MAX_BODY = 64 * 1024 * 1024


class BadRequest(Exception):
    pass


def _new_msg_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def _new_req_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


def anthropic_error(err_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": err_type, "message": message}}


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
    return out


class MockProviderServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, server_address, name: str, quiet: bool = False):
        self.name = name
        self.quiet = quiet
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.fault: dict = {"mode": "none"}
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

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def reset_state(self) -> None:
        with self.lock:
            self.requests.clear()
            self.fault = {"mode": "none"}

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
    def _send_bytes(self, status: int, body: bytes, content_type: str, extra_headers=None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", _new_req_id())
        for k, v in (extra_headers or {}).items():
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

    def start_chunked(self, status: int = 200, content_type: str = "text/event-stream") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", _new_req_id())
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

    def write_event(self, event: str, data: dict) -> None:
        self.write_chunk(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    def _sleep(self, ms) -> bool:
        """Interruptible sleep; returns True if the server is shutting down."""
        if not ms:
            return self.server.stop_event.is_set()
        return self.server.stop_event.wait(ms / 1000.0)

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

    # ---- Anthropic payloads ------------------------------------------------
    def _reply_text(self) -> str:
        return f"Hello from {self.server.name}"

    def _text_pieces(self) -> list[str]:
        return ["Hello", " from", " " + self.server.name]

    def message_body(self, model) -> dict:
        return {
            "id": _new_msg_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": self._reply_text()}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        }

    def _ev_message_start(self, model) -> tuple:
        return (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": _new_msg_id(),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
                },
            },
        )

    @staticmethod
    def _ev_block_start() -> tuple:
        return (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )

    @staticmethod
    def _ev_delta(text: str) -> tuple:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        )

    def stream_events(self, model) -> list[tuple]:
        events = [self._ev_message_start(model), self._ev_block_start(), ("ping", {"type": "ping"})]
        events += [self._ev_delta(p) for p in self._text_pieces()]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": OUTPUT_TOKENS},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return events

    def send_stream(self, events: list[tuple], chunk_delay_ms=0) -> None:
        self.start_chunked()
        for i, (name, data) in enumerate(events):
            if i and chunk_delay_ms:
                if self._sleep(chunk_delay_ms):
                    self.close_connection = True
                    return  # shutting down: leave the body unterminated
            self.write_event(name, data)
        self.end_chunked()

    def send_normal(self, model, stream: bool, fault: dict) -> None:
        if stream:
            self.send_stream(self.stream_events(model), fault.get("chunk_delay_ms") or 0)
        else:
            self.send_json(200, self.message_body(model))

    # ---- routing -----------------------------------------------------------
    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def do_GET(self) -> None:
        path = self._path()
        if path == "/_control/health":
            self.send_json(200, {"ok": True, "name": self.server.name})
        elif path == "/_control/requests":
            self.send_json(200, self.server.snapshot_requests())
        elif path == "/_control/fault":
            with self.server.lock:
                fault = dict(self.server.fault)
            self.send_json(200, fault)
        elif path == "/v1/messages":
            self.send_error_json(405, "invalid_request_error", "Method not allowed")
        else:
            self.send_error_json(404, "not_found_error", f"Not found: {path}")

    def do_POST(self) -> None:
        path = self._path()
        try:
            raw = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.send_error_json(400, "invalid_request_error", str(e))
            return

        if path == "/v1/messages":
            self.handle_messages(raw)
        elif path == "/_control/fault":
            try:
                fault = validate_fault(json.loads(raw or b"null"))
            except (ValueError, json.JSONDecodeError) as e:
                self.send_json(400, {"ok": False, "error": str(e)})
                return
            self.server.set_fault(fault)
            self._log(f"fault set: {fault}")
            self.send_json(200, fault)
        elif path == "/_control/reset":
            self.server.reset_state()
            self.send_json(200, {"ok": True})
        else:
            self.send_error_json(404, "not_found_error", f"Not found: {path}")

    # ---- /v1/messages ------------------------------------------------------
    def handle_messages(self, raw: bytes) -> None:
        body = None
        error = None
        try:
            body = json.loads(raw) if raw else None
            if not isinstance(body, dict):
                error = "request body must be a JSON object"
        except (ValueError, UnicodeDecodeError):
            error = "invalid JSON in request body"

        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            lk = k.lower()
            headers[lk] = f"{headers[lk]}, {v}" if lk in headers else v

        model = body.get("model") if isinstance(body, dict) else None
        stream = bool(body.get("stream")) if isinstance(body, dict) else False
        self.server.record(
            {
                "path": self.path,
                "method": self.command,
                "headers": headers,
                "model": model,
                "stream": stream,
                "body": body if isinstance(body, (dict, list)) else None,
                "time": time.time(),
            }
        )

        if error is None:
            missing = [k for k in ("model", "messages", "max_tokens") if k not in body]
            if missing:
                error = f"missing required field(s): {', '.join(missing)}"
            elif not isinstance(model, str):
                error = "model: must be a string"
            elif not isinstance(body["messages"], list):
                error = "messages: must be a list"
            elif isinstance(body["max_tokens"], bool) or not isinstance(body["max_tokens"], int):
                error = "max_tokens: must be an integer"
        if error is not None:
            self._log(f"POST /v1/messages -> 400 ({error})")
            self.send_error_json(400, "invalid_request_error", error)
            return

        fault = self.server.take_fault()
        mode = fault.get("mode", "none")
        self._log(f"POST /v1/messages model={model} stream={stream} mode={mode}")
        self.apply_fault(mode, fault, model, stream)

    def apply_fault(self, mode: str, fault: dict, model, stream: bool) -> None:
        if mode == "none":
            self.send_normal(model, stream, fault)

        elif mode == "500":
            self.send_error_json(500, "api_error", "Internal server error")

        elif mode == "529":
            self.send_error_json(529, "overloaded_error", "Overloaded")

        elif mode == "429":
            retry_after = fault.get("retry_after", 2)
            extra = {}
            if retry_after is not None:
                if isinstance(retry_after, float) and retry_after.is_integer():
                    retry_after = int(retry_after)
                extra["retry-after"] = str(retry_after)
            self.send_error_json(
                429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.", extra
            )

        elif mode == "503":
            self._send_bytes(503, b"upstream unavailable", "text/plain")

        elif mode in CLIENT_ERRORS:
            err_type, message = CLIENT_ERRORS[mode]
            self.send_error_json(int(mode), err_type, message)

        elif mode == "hang":
            self.close_connection = True
            self._sleep(fault.get("hang_ms", 60000))
            # then just close (FIN) without a response

        elif mode == "reset":
            self.abort_with_rst()

        elif mode == "stream_error":
            if not stream:
                self.send_error_json(529, "overloaded_error", "Overloaded")
                return
            events = [
                self._ev_message_start(model),
                self._ev_block_start(),
                self._ev_delta(self._text_pieces()[0]),
                ("error", anthropic_error("overloaded_error", "Overloaded")),
            ]
            self.send_stream(events, fault.get("chunk_delay_ms") or 0)

        elif mode == "truncate":
            if stream:
                events = [
                    self._ev_message_start(model),
                    self._ev_block_start(),
                    self._ev_delta(self._text_pieces()[0]),
                ]
                self.send_stream(events, fault.get("chunk_delay_ms") or 0)
            else:
                full = json.dumps(self.message_body(model)).encode()
                self.close_connection = True
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(full)))
                self.send_header("request-id", _new_req_id())
                self.end_headers()
                self.wfile.write(full[: len(full) // 2])
                self.wfile.flush()

        elif mode == "slow_first_byte":
            if self._sleep(fault.get("delay_ms", 2000)):
                self.close_connection = True
                return
            self.send_normal(model, stream, fault)

        elif mode == "garbage":
            rng = random.Random()
            if stream:
                self.start_chunked()
                self.write_chunk(bytes(rng.getrandbits(8) for _ in range(256)))
                self.write_chunk(b"\xff\xfe\xfd\xc3\x28\xa0\xa1\xe2\x28\xa1\n")
                self.write_chunk(b"data:\n\ndata:\n\n")
                self.write_chunk(b"event: content_block_delta\ndata: {not json\n\n")
                self.write_chunk(b"data: \x00\x01\x02\xff\n\n")
                self.write_chunk(bytes(rng.choice(b"ABCDEFGHabcdefgh0123456789{}[]:,\"") for _ in range(100 * 1024)))
                self.end_chunked()
            else:
                junk = b'{"id": "msg_\xff\xfe, "type": message, [[[' + os.urandom(64)
                self._send_bytes(200, junk, "application/json")

        else:  # should not happen: validated on set
            self.send_error_json(500, "api_error", f"unknown fault mode {mode!r}")


def make_server(name: str, port: int = 0, host: str = "127.0.0.1", quiet: bool = True) -> MockProviderServer:
    return MockProviderServer((host, port), name=name, quiet=quiet)


def start_mock(name: str, port: int = 0, host: str = "127.0.0.1", quiet: bool = True):
    """Start a mock provider in a daemon thread. Returns (server, port).

    Stop it with ``server.shutdown()``.
    """
    server = make_server(name, port, host, quiet)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"mock-{name}", daemon=True)
    t.start()
    server.thread = t
    return server, server.server_address[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Mock Anthropic Messages API provider with fault injection")
    ap.add_argument("--port", type=int, default=18101)
    ap.add_argument("--name", default="primary")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    args = ap.parse_args(argv)

    server = make_server(args.name, args.port, args.host, quiet=args.quiet)
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
