"""Turn a target spec into an `Endpoint`: read the API key, check the server, find the model.

The preflight turns the commonest set-up mistakes (nothing listening, a wrong URL, a wrong model
name, a rejected key) into one clear error before any load is sent.
"""

from __future__ import annotations

import errno
import os

import aiohttp
import orjson

from latbench.client.apis import API_KINDS, RequestOptions
from latbench.client.nonstream import location
from latbench.client.reads import read_bounded
from latbench.client.retry import RetryPolicy
from latbench.client.stream import Endpoint, StreamLimits, Timeouts
from latbench.shared.errors import SpecError, TargetError
from latbench.shared.secrets import read_secret_file
from latbench.spec import TargetSpec, WorkloadSpec

SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "proxy-authorization")
# The Messages API version latbench's Anthropic parser follows; a header may override it.
ANTHROPIC_VERSION = "2023-06-01"
# APIs whose servers (hosted ones) list many models: the first is no guess of the one meant.
EXPLICIT_MODEL_APIS = ("anthropic", "responses")
# A model list is read up to this size (10,000 models are ~1 MB); a larger or endless body is
# not a usable list, and is not read further.
MAX_MODELS_BYTES = 16 << 20
NAMED_MODELS = 5  # an error names this many of the served models, and the count


def model_names(served: list[str]) -> str:
    """A few of the served models, and how many there are in all: a server may list thousands."""
    names = ", ".join(f"{m!r:.80}" for m in served[:NAMED_MODELS]) or "none"
    return names if len(served) <= NAMED_MODELS else f"{names}, ... ({len(served)} in all)"


def retry_policy(t: TargetSpec) -> RetryPolicy:
    """The target's `retry` section as the policy the client follows."""
    return RetryPolicy(t.retry.max_retries, t.retry.backoff, t.retry.max_wait)


def read_api_key(t: TargetSpec) -> str | None:
    if t.api_key_env:
        key = os.environ.get(t.api_key_env)
        if not key:
            raise SpecError(f"target.api_key_env: environment variable {t.api_key_env} is not set")
        return key.strip()
    if t.api_key_file:
        key = read_secret_file(t.api_key_file, "target.api_key_file")
        if not key:
            raise SpecError(f"target.api_key_file: {t.api_key_file} is empty")
        return key
    return None


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if _is_secret(k) else v) for k, v in headers.items()}


def _is_secret(name: str) -> bool:
    n = name.lower()
    return n in SECRET_HEADERS or "token" in n or "key" in n or "secret" in n


async def resolve_endpoint(
    session: aiohttp.ClientSession, t: TargetSpec, base_url: str, w: WorkloadSpec
) -> Endpoint:
    headers = auth_headers(t, read_api_key(t))
    served = await _list_models(session, base_url, headers, t.timeouts.connect, t.api)
    model = t.model
    if model is None:
        if not served:
            raise TargetError(
                f"{base_url}/v1/models lists no model, so it cannot be auto-detected; "
                "give one with --model (target.model)"
            )
        if len(served) > 1 and t.api in EXPLICIT_MODEL_APIS:
            raise TargetError(
                f"{base_url}/v1/models lists {len(served)} models ({model_names(served)}); "
                "name one with --model (target.model)"
            )
        model = served[0]
    elif served is not None and model not in served:
        raise TargetError(
            f"model {model!r} is not served by {base_url}; it serves: {model_names(served)}"
        )
    to = t.timeouts
    return Endpoint(
        base_url=base_url,
        api=API_KINDS[t.api],
        options=RequestOptions(
            model=model,
            vllm_extensions=bool(t.vllm_extensions),
            ignore_eos=w.ignore_eos,
            extra_body=w.extra_body,
        ),
        headers=headers,
        timeouts=Timeouts(to.connect, to.first_token, to.idle, to.total),
        retry=retry_policy(t),
        limits=StreamLimits(t.stream_limits.max_line_bytes, t.stream_limits.max_event_bytes),
    )


def auth_headers(t: TargetSpec, key: str | None) -> dict[str, str]:
    """The spec's headers plus authentication; a header the spec sets is never overridden."""
    headers = dict(t.headers)
    given = {k.lower() for k in headers}
    if t.api == "anthropic":
        # Anthropic takes the key in x-api-key and pins the API version in a header.
        extra = {"anthropic-version": ANTHROPIC_VERSION}
        if key:
            extra["x-api-key"] = key
    else:
        extra = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update({k: v for k, v in extra.items() if k.lower() not in given})
    return headers


async def _list_models(
    session: aiohttp.ClientSession,
    base_url: str,
    headers: dict[str, str],
    connect_s: float,
    api: str,
) -> list[str] | None:
    """The served model ids, or None when the server has no usable /v1/models."""
    # Anthropic pages its list (20 by default, at most 1000 a page).
    url = f"{base_url}/v1/models"
    params = {"limit": "1000"} if api == "anthropic" else None
    try:
        # No redirect is followed: the key would go with it to a server it was not meant for
        # (aiohttp drops Authorization across origins, not x-api-key or custom headers).
        async with session.get(
            url,
            headers=headers,
            params=params,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=connect_s + 20),
        ) as resp:
            if 300 <= resp.status < 400:
                where = location(resp) or "nowhere"
                raise TargetError(
                    f"{url} redirects (HTTP {resp.status}) to {where}; latbench follows no "
                    "redirect, so that no key leaves for another server: give the final URL"
                )
            if resp.status in (401, 403):
                raise TargetError(
                    f"{url} rejected the request (HTTP {resp.status}): check the API key"
                )
            if resp.status != 200:
                return None
            raw = await read_bounded(resp.content, MAX_MODELS_BYTES)
            if len(raw) > MAX_MODELS_BYTES:
                return None  # not a list that can name a model; the connection is dropped
            body = orjson.loads(raw)
    except aiohttp.ClientConnectorError as e:
        refused = e.os_error is not None and e.os_error.errno == errno.ECONNREFUSED
        why = "connection refused (is the server running on that port?)" if refused else str(e)
        raise TargetError(f"cannot reach {base_url}: {why}") from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise TargetError(f"{url} did not answer properly: {type(e).__name__}: {e}") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    if body.get("has_more") is True:
        return None  # a partial list can neither name the model nor rule one out
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
