"""The simulator's JSON replies and errors, each in the shape its API uses, and the auth check
that the real APIs make (a bearer key for OpenAI and vLLM, `x-api-key` and `anthropic-version`
for Anthropic)."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from latbench.sim.anthropic_format import anthropic_error_body
from latbench.sim.config import SimConfig
from latbench.sim.request import Api


def error_type(status: int) -> str:
    """vLLM's error type names: 400 -> BadRequestError, 503 -> ServiceUnavailableError."""
    try:
        name = HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        name = "ClientError" if status < 500 else "ServerError"
    return name if name.endswith("Error") else name + "Error"


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    error = {"message": message, "type": error_type(status), "param": param, "code": status}
    return {"error": error}


def error_response(
    status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response(error_body(status, message, param), status=status, headers=headers)


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj),
        status=status,
        headers=headers,
        content_type="application/json",
        reason="Overloaded" if status == 529 else None,  # not in http.HTTPStatus
    )


def api_error(
    api: Api,
    status: int,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error in the shape the route's API uses."""
    if api == "anthropic":
        return json_response(anthropic_error_body(status, message), status=status, headers=headers)
    return error_response(status, message, param, headers)


def check_auth(request: web.Request, config: SimConfig) -> web.Response | None:
    """None when the request may proceed, else the refusal the real API would send."""
    anthropic = config.api == "anthropic"
    api: Api = "anthropic" if anthropic else "chat"
    if anthropic and "anthropic-version" not in request.headers:
        return api_error(api, 400, "anthropic-version: header is required")
    if config.api_key is None:
        return None
    if anthropic:
        given = request.headers.get("x-api-key")
    else:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given if scheme.lower() == "bearer" else None
    if given != config.api_key:
        return api_error(api, 401, "invalid x-api-key" if anthropic else "Invalid API key.")
    return None
