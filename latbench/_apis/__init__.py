"""API kinds, listed explicitly: the name used in specs -> the object that speaks it."""

from __future__ import annotations

from latbench._apis._base import ApiKind, Event, MalformedEvent, RequestOptions
from latbench._apis._openai import Chat, Completions

API_KINDS: dict[str, ApiKind] = {
    "chat": Chat(),
    "completions": Completions(),
}

__all__ = ["API_KINDS", "ApiKind", "Event", "MalformedEvent", "RequestOptions"]
