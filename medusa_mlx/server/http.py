"""The HTTP layer: stdlib ``http.server``, one thread per connection, as mlx_lm.server.

Endpoints and response shapes follow ``mlx_lm.server`` (``GET /health``,
``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``;
server-sent events ending in ``data: [DONE]``) plus a ``medusa`` object
(steps, tokens per step, accepted tokens, tree) that OpenAI clients ignore.
Errors are OpenAI error objects. A connection thread only parses, validates and
waits for the worker (see ``worker.py``); it watches its socket meanwhile, and a
client that hangs up cancels its request, queued or running.
"""

import hmac
import json
import logging
import queue
import select
import socket
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .requests import Limits, RequestError, SamplingDefaults, parse_request
from .worker import Delta, Failed, Finished, Job, Worker

log = logging.getLogger("medusa_mlx.server")
ROUTES = {"/v1/chat/completions": "chat", "/chat/completions": "chat", "/v1/completions": "text",
          "/completions": "text"}


@dataclass
class ServerConfig:
    model_id: str  # what /v1/models lists
    limits: Limits
    defaults: SamplingDefaults
    max_request_bytes: int = 1 << 20
    api_key: Optional[str] = None
    allowed_origins: tuple = ()
    poll_seconds: float = 0.2  # how often a waiting connection checks its client is still there


class MedusaHandler(BaseHTTPRequestHandler):
    server_version = "medusa-mlx"
    timeout = 60  # seconds a client may take to send its request (slow clients cannot pin a thread)
    worker: Worker
    config: ServerConfig

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        log.info("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------- replies

    def _headers(self, status: int, content_type: str = "application/json", length: Optional[int] = None,
                 extra: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        origin = self.headers.get("Origin")
        if "*" in self.config.allowed_origins or origin in self.config.allowed_origins:
            self.send_header("Access-Control-Allow-Origin", "*" if "*" in self.config.allowed_origins else origin)
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _json(self, status: int, body: dict, extra: Optional[dict] = None) -> None:
        data = json.dumps(body).encode()
        self._headers(status, length=len(data), extra=extra)
        self.wfile.write(data)

    def _error(self, e: RequestError) -> None:
        self._json(e.status, e.body(), extra={"Retry-After": "1"} if e.status == 503 else None)

    # --------------------------------------------------------------- routes

    def do_OPTIONS(self):
        self._headers(204, length=0)

    def do_GET(self):
        self._safely(self._get)

    def do_POST(self):
        self._safely(self._post)

    def _safely(self, action) -> None:
        try:
            action()
        except RequestError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001  (no request may take the server down)
            log.exception("handler failed")
            try:
                self._error(RequestError(f"internal error: {e}", 500, kind="server_error"))
            except OSError:
                self.close_connection = True

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            ok = self.worker.healthy
            self._json(200 if ok else 503, {"status": "ok" if ok else "unavailable"})
            return
        self._authorize()
        if path in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [self._model_card()]})
        elif path.startswith("/v1/models/"):
            if path[len("/v1/models/"):] != self.config.model_id:
                raise RequestError(f"model {path[len('/v1/models/'):]!r} not found", 404, code="model_not_found")
            self._json(200, self._model_card())
        else:
            raise RequestError(f"no such endpoint: GET {path}", 404)

    def _model_card(self) -> dict:
        return {"id": self.config.model_id, "object": "model", "created": int(time.time()), "owned_by": "medusa-mlx"}

    def _authorize(self) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        # Constant-time comparison: the reply time says nothing about how much of the key matched.
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())):
            raise RequestError("invalid or missing API key (Authorization: Bearer KEY)", 401, code="invalid_api_key")

    def _read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError("a Content-Length header is required", 411)
        if not length.isdigit():
            raise RequestError(f"invalid Content-Length {length!r}")
        if int(length) > self.config.max_request_bytes:
            self.close_connection = True  # the unread body must not be parsed as a next request
            raise RequestError(f"request body of {length} bytes is larger than the limit of "
                               f"{self.config.max_request_bytes} bytes", 413, code="request_too_large")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise RequestError(f"invalid JSON in request body: {e}") from None

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        kind = ROUTES.get(path)
        if kind is None:
            self.close_connection = True
            raise RequestError(f"no such endpoint: POST {path}", 404)
        self._authorize()
        body = self._read_body()
        request = parse_request(body, kind, self.worker.tokenizer, self.config.limits, self.config.defaults)
        job = Job(request)
        self.worker.submit(job)
        try:
            reply = _Reply(request, kind)
            if request.stream:
                self._stream(job, reply)
            else:
                self._complete(job, reply)
        finally:
            job.cancel()  # a no-op once finished; frees the turn on any error or hang-up

    # ---------------------------------------------------------- generation

    def _events(self, job: Job):
        """The job's events; stops (cancelling the job) when the client hangs up."""
        while True:
            try:
                event = job.events.get(timeout=self.config.poll_seconds)
            except queue.Empty:
                if not self.worker.healthy:
                    yield Failed(RequestError("the generation worker stopped", 503, kind="server_error"))
                    return
                if self._client_gone():
                    log.info("client %s went away: request cancelled", self.address_string())
                    job.cancel()
                    self.close_connection = True
                    return
                continue
            yield event
            if not isinstance(event, Delta):
                return

    def _client_gone(self) -> bool:
        """True when the peer closed its side (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _complete(self, job: Job, reply: "_Reply") -> None:
        text = []
        for event in self._events(job):
            if isinstance(event, Delta):
                text.append(event.text)
            elif isinstance(event, Failed):
                raise event.error
            else:
                self._json(200, reply.complete("".join(text), event))

    def _stream(self, job: Job, reply: "_Reply") -> None:
        started = False
        for event in self._events(job):
            if isinstance(event, Failed) and not started:
                raise event.error
            if not started:
                self._headers(200, "text/event-stream", extra={"Cache-Control": "no-cache"})
                started = True
            if isinstance(event, Delta):
                chunks = [reply.chunk(event.text, None)]
            elif isinstance(event, Failed):
                chunks = [event.error.body()]
            else:
                chunks = [reply.chunk("", event.finish_reason, event)]
                if job.request.include_usage:
                    chunks.append(reply.usage_chunk(event))
            try:
                for chunk in chunks:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if not isinstance(event, Delta):
                    self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except OSError:
                log.info("client %s went away mid-stream: request cancelled", self.address_string())
                job.cancel()
                self.close_connection = True
                return


class _Reply:
    """OpenAI response objects for one request (chat or text completion)."""

    def __init__(self, request, kind: str):
        self.request = request
        self.chat = kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4()}"
        self.created = int(time.time())

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.request.model,
                "system_fingerprint": "medusa-mlx"}

    @staticmethod
    def usage(f: Finished) -> dict:
        return {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
                "total_tokens": f.prompt_tokens + f.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": f.cached_tokens}}

    def complete(self, text: str, f: Finished) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": f.finish_reason,
                      "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": f.finish_reason, "logprobs": None}
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self._base(obj), "choices": [choice], "usage": self.usage(f), "medusa": f.medusa}

    def chunk(self, text: str, finish_reason: Optional[str], f: Optional[Finished] = None) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if text or finish_reason is None else {}
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        out = {**self._base("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]}
        if f is not None:
            out["medusa"] = f.medusa
        return out

    def usage_chunk(self, f: Finished) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._base(obj), "choices": [], "usage": self.usage(f), "medusa": f.medusa}


def make_server(host: str, port: int, worker: Worker, config: ServerConfig) -> ThreadingHTTPServer:
    """An HTTP server bound to ``host:port`` (port 0: a free one, see ``server_address``)."""
    handler = type("Handler", (MedusaHandler,), {"worker": worker, "config": config})
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
    return server_class((host, port), handler)
