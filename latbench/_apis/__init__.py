"""API kinds, listed explicitly: the name used in specs -> the object that speaks it."""

from __future__ import annotations

from latbench._apis._anthropic import Messages
from latbench._apis._base import ApiKind, Event, MalformedEvent, RequestOptions
from latbench._apis._openai import Chat, Completions
from latbench._apis._responses import Responses

API_KINDS: dict[str, ApiKind] = {
    "chat": Chat(),
    "completions": Completions(),
    "anthropic": Messages(),
    "responses": Responses(),
}

__all__ = ["API_KINDS", "ApiKind", "Event", "MalformedEvent", "RequestOptions"]
