"""Request bodies of the OpenAI API -> a validated :class:`GenerationRequest`.

Validation happens in the HTTP thread, before a request is queued, so that every
malformed request is answered at once with a 400 and an OpenAI-style error object
(``{"error": {"message", "type", "param", "code"}}``) and never reaches the model.
Field names and defaults follow the OpenAI API as ``mlx_lm.server`` reads it
(``max_completion_tokens`` before ``max_tokens``, sampler defaults from the CLI).
Unknown fields are refused rather than silently ignored, so that a client never
believes a setting was honoured; fields OpenAI clients send routinely are accepted
when they ask for nothing this server does not do (``n: 1``, zero penalties, ...).
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from ..conversation import encode_prompt

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed")
COMMON_FIELDS = {
    "model", "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options", "accept",
    *SAMPLING_FIELDS,
}
# Accepted only with the value that asks for nothing (what clients send by default).
NEUTRAL_VALUES = {
    "n": (1,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "logit_bias": ({},),
    "tools": ([],),
    "response_format": ({"type": "text"},),
}
FREE_FIELDS = {"user", "parallel_tool_calls", "tool_choice", "metadata", "store"}  # no effect on decoding
CHAT_FIELDS = COMMON_FIELDS | {"messages"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo"}
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4  # as OpenAI


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 code: Optional[str] = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What the server accepts (CLI options)."""

    max_tokens: int = 512  # default when a request gives none
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    context_length: Optional[int] = None  # the model's, from its config
    vocab_size: Optional[int] = None  # token ids a /v1/completions prompt may hold


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    accept: str = "lossless"


@dataclass
class GenerationRequest:
    kind: str  # "chat" or "text"
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    accept: str  # "greedy" at temperature 0, else "lossless" or "typical"
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str = "default_model"


TYPE_NAMES = {(str,): "a string", (bool,): "a boolean", (int,): "an integer", (int, float): "a number", (dict,): "an object"}


def _check(body: dict, name: str, types: tuple, low=None, high=None, default: Any = None):
    """``body[name]`` checked against JSON types and bounds (missing or null: ``default``)."""
    value = body.get(name, default)
    if value is None:
        return default
    # JSON true/false are Python bools, which are ints: never accept them as numbers.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise RequestError(f"'{name}' must be {TYPE_NAMES[types]}, got {json_type(value)}", param=name)
    if low is not None and value < low:
        raise RequestError(f"'{name}' must be at least {low}, got {value}", param=name)
    if high is not None and value > high:
        raise RequestError(f"'{name}' must be at most {high}, got {value}", param=name)
    return value


def json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _check_fields(body: dict, allowed: set) -> None:
    for name, value in body.items():
        if name in allowed or name in FREE_FIELDS:
            continue
        if name in NEUTRAL_VALUES:
            if value is None or value in NEUTRAL_VALUES[name]:
                continue
            raise RequestError(f"'{name}' = {value!r} is not supported by this server", param=name,
                               code="unsupported_parameter")
        raise RequestError(f"unknown field '{name}'", param=name, code="unknown_parameter")


def _text_content(content, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported",
                                   param="messages")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"{where}.content must be a string or a list of text parts, got {json_type(content)}",
                       param="messages")


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array of messages", param="messages")
    clean = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object, got {json_type(m)}", param="messages")
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", param="messages")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        # Templates that know no "developer" role (OpenAI's new name for system) get "system".
        clean.append({"role": "system" if role == "developer" else role, "content": _text_content(content, where)})
    return clean


def completion_prompt(body: dict, tokenizer, vocab_size: Optional[int]) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # ["text"]: one prompt, as clients often send it
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError("'prompt' is empty", param="prompt")
        return list(encode_prompt(tokenizer, prompt))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if any(t < 0 or (vocab_size is not None and t >= vocab_size) for t in prompt):
            raise RequestError(f"'prompt' token ids must be in [0, {vocab_size})", param="prompt")
        return list(prompt)
    raise RequestError("'prompt' must be a non-empty string or array of token ids (one prompt per request)",
                       param="prompt")


def parse_request(body: Any, kind: str, tokenizer, limits: Limits, defaults: SamplingDefaults) -> GenerationRequest:
    """A decoded JSON body of ``/v1/chat/completions`` (kind "chat") or
    ``/v1/completions`` (kind "text") -> GenerationRequest, or RequestError."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {json_type(body)}")
    _check_fields(body, CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS)
    if body.get("echo"):
        raise RequestError("'echo' = true is not supported by this server", param="echo", code="unsupported_parameter")
    model = _check(body, "model", (str,), default="default_model")
    stream = _check(body, "stream", (bool,), default=False)
    options = _check(body, "stream_options", (dict,), default={})
    if set(options) - {"include_usage"}:
        raise RequestError(f"unknown stream_options field(s): {', '.join(sorted(set(options) - {'include_usage'}))}",
                           param="stream_options")
    include_usage = _check(options, "include_usage", (bool,), default=False)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _check(body, name, (int,), low=1, high=limits.max_tokens_limit, default=limits.max_tokens)
    temperature = _check(body, "temperature", (int, float), low=0, high=100, default=defaults.temperature)
    top_p = _check(body, "top_p", (int, float), low=0, high=1, default=defaults.top_p)
    top_k = _check(body, "top_k", (int,), low=0, default=defaults.top_k)
    min_p = _check(body, "min_p", (int, float), low=0, high=1, default=defaults.min_p)
    seed = _check(body, "seed", (int,), low=0, default=None)  # numpy refuses negative seeds
    accept = _check(body, "accept", (str,), default=defaults.accept)
    if accept not in ("lossless", "typical"):
        raise RequestError(f"'accept' must be 'lossless' or 'typical', got {accept!r}", param="accept")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_SEQUENCES:
        raise RequestError(f"'stop' must be a non-empty string or an array of up to {MAX_STOP_SEQUENCES} of them",
                           param="stop")
    if kind == "chat":
        messages = chat_messages(body)
        try:
            prompt = encode_prompt(tokenizer, messages)
        except Exception as e:  # noqa: BLE001  (a chat template may raise anything on odd role orders)
            raise RequestError(f"the model's chat template refused these messages: {e}", param="messages") from e
    else:
        prompt = completion_prompt(body, tokenizer, limits.vocab_size)
    context = limits.context_length
    if context is not None and len(prompt) + 1 >= context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens; the prompt has {len(prompt)} tokens "
            "(at least one more is needed for the answer)",
            param="messages" if kind == "chat" else "prompt", code="context_length_exceeded",
        )
    return GenerationRequest(
        kind=kind, prompt=prompt, max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p),
        top_k=top_k, min_p=float(min_p), accept="greedy" if temperature == 0 else accept, seed=seed, stop=stop,
        stream=stream, include_usage=include_usage, model=model,
    )
