"""A generation request's body, validated as vLLM (or the API the simulator plays) would.

The "tokenizer" counts one whitespace-separated word as one token, so prompt and completion
lengths are easy to predict in tests; prompt.py says what a prompt's tokens are. A refusal raises
`ApiError` with the real API's status and message.

A request that offers tools (`tools`, in each format's shape) is answered the way an agent's model
answers: its reply ends with a call of the first tool offered, unless `tool_steps` tool results
already follow the last user message, and then it answers in text (`tool_plan`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from latbench.sim.anthropic_format import anthropic_prompt
from latbench.sim.config import TOOL_CALL_TOKENS, SimConfig
from latbench.sim.formats import ApiError
from latbench.sim.prompt import Prompt, name_of, object_of, text_of
from latbench.sim.responses_format import responses_prompt

Api = Literal["completions", "chat", "anthropic", "responses"]


@dataclass(frozen=True, slots=True)
class GenRequest:
    api: Api
    model: str
    prompt: Prompt
    prompt_tokens: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool
    # The tool call ending the reply: its tokens (None: `tool_call_tokens` as configured, for a
    # request that offers no tools) and the tool it names (None: the simulator's own).
    tool_call: int | None = None
    tool_name: str | None = None


def tool_plan(prompt: Prompt, config: SimConfig) -> tuple[int | None, str | None]:
    """(tool call tokens, tool name) for a request's reply; see the module docstring."""
    if not prompt.tools:
        return None, None
    if prompt.tool_results >= config.tool_steps:
        return 0, None
    return config.tool_call_tokens or TOOL_CALL_TOKENS, prompt.tools[0]


def parse_request(api: Api, body: object, config: SimConfig) -> GenRequest:
    """Validate a request body as vLLM would; raises ApiError with vLLM's status and message."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model", config.model)
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    if model != config.model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    prompt = Prompt(image_tokens=config.image_tokens)
    _PROMPTS[api](body, prompt)
    prompt_tokens = len(prompt.tokens)

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
    tool_call, tool_name = tool_plan(prompt, config)
    return GenRequest(
        api=api,
        model=model,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=_opt_bool(body, "ignore_eos"),
        stream=stream,
        include_usage=include_usage,
        # As in vLLM, per-chunk usage is only sent when usage is asked for at all.
        continuous_usage=include_usage and continuous,
        tool_call=tool_call,
        tool_name=tool_name,
    )


def _too_long(config: SimConfig, prompt: int, completion: int, api: Api) -> str:
    where = {"chat": "messages", "anthropic": "messages", "responses": "input"}.get(api, "prompt")
    return (
        f"This model's maximum context length is {config.max_model_len} tokens. However, you "
        f"requested {prompt + completion} tokens ({prompt} in the {where}, {completion} in the "
        f"completion). Please reduce the length of the {where} or completion."
    )


def _completion_prompt(body: dict[str, Any], prompt: Prompt) -> None:
    text = body.get("prompt")
    if text is None:
        raise ApiError(400, "prompt is required", "prompt")
    # A one-element batch is unwrapped; real batches (n prompts, n choices) are not simulated.
    if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str | list):
        text = text[0]
    if isinstance(text, str):
        prompt.words(text)
    elif isinstance(text, list) and all(type(t) is int for t in text):
        prompt.tokens.extend(text)
    else:
        raise ApiError(400, "prompt must be a string or a list of token ids", "prompt")


def _chat_prompt(body: dict[str, Any], prompt: Prompt) -> None:
    _chat_tools(body.get("tools"), prompt)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages is required and must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, "each message must be an object with a string role", "messages")
        where = f"messages[{i}]"
        role = m["role"]
        if role == "user":
            prompt.user_turn()
        elif role == "tool":
            text_of(m.get("tool_call_id"), f"{where}.tool_call_id")
            prompt.tool_result()
        content = m.get("content")
        if isinstance(content, str):
            prompt.words(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                _chat_part(part, f"{where}.content[{j}]", prompt)
        elif content is not None:
            raise ApiError(400, "message content must be a string or a list of parts", "messages")
        if role == "assistant" and m.get("tool_calls") is not None:
            _chat_tool_calls(m["tool_calls"], f"{where}.tool_calls", prompt)


def _chat_part(part: object, where: str, prompt: Prompt) -> None:
    if not isinstance(part, dict):
        raise ApiError(400, f"{where} must be an object", where)
    if part.get("type") == "image_url":
        image = part.get("image_url")
        # OpenAI's shape is {"url": ...}; vLLM also takes the URL itself.
        url = image.get("url") if isinstance(image, dict) else image
        prompt.data_url(url, f"{where}.image_url.url")
    elif isinstance(part.get("text"), str):
        prompt.words(part["text"])


def _chat_tools(tools: object, prompt: Prompt) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be a list", "tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ApiError(400, f'{where} must be an object with "type": "function"', where)
        function = object_of(tool.get("function"), f"{where}.function")
        name = name_of(function.get("name"), f"{where}.function.name")
        schema = function.get("parameters")
        if schema is not None:
            object_of(schema, f"{where}.function.parameters")
        prompt.tool(name, function.get("description"), schema)


def _chat_tool_calls(calls: object, where: str, prompt: Prompt) -> None:
    if not isinstance(calls, list):
        raise ApiError(400, f"{where} must be a list", where)
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        call = object_of(call, at)
        text_of(call.get("id"), f"{at}.id")
        function = object_of(call.get("function"), f"{at}.function")
        prompt.words(name_of(function.get("name"), f"{at}.function.name"))
        prompt.words(text_of(function.get("arguments"), f"{at}.function.arguments"))


def tokenize_count(body: Any, config: SimConfig) -> int:
    """The prompt tokens of a `/tokenize` body as vLLM's takes it (a `prompt`, or chat
    `messages`), counted as the generation routes count them."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    prompt = Prompt(image_tokens=config.image_tokens)
    (_chat_prompt if "messages" in body else _completion_prompt)(body, prompt)
    return len(prompt.tokens)


_PROMPTS: dict[Api, Callable[[dict[str, Any], Prompt], None]] = {
    "completions": _completion_prompt,
    "chat": _chat_prompt,
    "anthropic": anthropic_prompt,
    "responses": responses_prompt,
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
