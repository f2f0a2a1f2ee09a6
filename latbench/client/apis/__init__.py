"""API kinds, listed explicitly: the name used in specs -> the object that speaks it."""

from __future__ import annotations

from latbench.client.apis.anthropic import Messages
from latbench.client.apis.base import ApiKind, Event, MalformedEvent, RequestOptions
from latbench.client.apis.openai import Chat, Completions
from latbench.client.apis.responses import Responses

API_KINDS: dict[str, ApiKind] = {
    "chat": Chat(),
    "completions": Completions(),
    "anthropic": Messages(),
    "responses": Responses(),
}

__all__ = ["API_KINDS", "ApiKind", "Event", "MalformedEvent", "RequestOptions"]
