"""A generation request's body, validated as vLLM (or the API the simulator plays) would.

The "tokenizer" counts one whitespace-separated word as one token, so prompt and completion
lengths are easy to predict in tests. A refusal raises `ApiError` with the real API's status and
message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from latbench.sim.anthropic_format import anthropic_prompt_tokens
from latbench.sim.config import SimConfig
from latbench.sim.formats import ApiError
from latbench.sim.responses_format import responses_prompt_tokens

Api = Literal["completions", "chat", "anthropic", "responses"]


@dataclass(frozen=True, slots=True)
class GenRequest:
    api: Api
    model: str
    prompt_tokens: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool


def parse_request(api: Api, body: object, config: SimConfig) -> GenRequest:
    """Validate a request body as vLLM would; raises ApiError with vLLM's status and message."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model", config.model)
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    if model != config.model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    prompt_tokens = _PROMPT_TOKENS[api](body)

    # Chat prefers the newer name, as vLLM does.
    key = (
        "max_completion_tokens"
        if api == "chat" and "max_completion_tokens" in body
        else "max_output_tokens"
        if api == "responses"
        else "max_tokens"
    )
    max_tokens = _opt_int(body, key)
    if max_tokens is None and api == "anthropic":
        raise ApiError(400, "max_tokens: Field required", "max_tokens")
    room = config.max_model_len - prompt_tokens
    if max_tokens is None:
        if room < 1:
            raise ApiError(400, _too_long(config, prompt_tokens, 1, api))
        max_tokens = min(config.default_max_tokens, room)
    if max_tokens < 1:
        raise ApiError(400, f"{key} must be at least 1, got {max_tokens}.", key)
    if max_tokens > room:
        raise ApiError(400, _too_long(config, prompt_tokens, max_tokens, api))
    min_tokens = _opt_int(body, "min_tokens") or 0
    if not 0 <= min_tokens <= max_tokens:
        raise ApiError(
            400,
            f"min_tokens must be between 0 and max_tokens ({max_tokens}), got {min_tokens}.",
            "min_tokens",
        )

    stream = _opt_bool(body, "stream")
    # Only the OpenAI-compatible APIs have stream_options; the others always report usage.
    options = body.get("stream_options") if api in ("chat", "completions") else None
    if options is not None and not stream:
        message = "Stream options can only be defined when `stream=True`."
        raise ApiError(400, message, "stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    options = options or {}
    include_usage = _opt_bool(options, "include_usage", "stream_options.include_usage")
    continuous = _opt_bool(
        options, "continuous_usage_stats", "stream_options.continuous_usage_stats"
    )
    return GenRequest(
        api=api,
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=_opt_bool(body, "ignore_eos"),
        stream=stream,
        include_usage=include_usage,
        # As in vLLM, per-chunk usage is only sent when usage is asked for at all.
        continuous_usage=include_usage and continuous,
    )


def _too_long(config: SimConfig, prompt: int, completion: int, api: Api) -> str:
    where = {"chat": "messages", "anthropic": "messages", "responses": "input"}.get(api, "prompt")
    return (
        f"This model's maximum context length is {config.max_model_len} tokens. However, you "
        f"requested {prompt + completion} tokens ({prompt} in the {where}, {completion} in the "
        f"completion). Please reduce the length of the {where} or completion."
    )


def _prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "prompt is required", "prompt")
    # A one-element batch is unwrapped; real batches (n prompts, n choices) are not simulated.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        return len(prompt)
    raise ApiError(400, "prompt must be a string or a list of token ids", "prompt")


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages is required and must be a non-empty list", "messages")
    total = 0
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, "each message must be an object with a string role", "messages")
        content = m.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
        elif content is not None:
            raise ApiError(400, "message content must be a string or a list of parts", "messages")
    return total


def tokenize_count(body: Any) -> int:
    """The prompt tokens of a `/tokenize` body as vLLM's takes it (a `prompt`, or chat
    `messages`), counted as the generation routes count them."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return (_chat_prompt_tokens if "messages" in body else _prompt_tokens)(body)


_PROMPT_TOKENS = {
    "completions": _prompt_tokens,
    "chat": _chat_prompt_tokens,
    "anthropic": anthropic_prompt_tokens,
    "responses": responses_prompt_tokens,
}


def _opt_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise ApiError(400, f"{key} must be an integer, got {value!r}", key)
    return value


def _opt_bool(body: Mapping[str, Any], key: str, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{param or key} must be a boolean, got {value!r}", param or key)
    return value
