"""One request to one server, streamed: the body sent, the response read, every byte stamped at
the socket read that brought it, and the whole turned into one `Record`.

    stream      `stream_request`: send, read the head, read the events, classify any failure
    nonstream   the answers that bring no token (a redirect, an error status, not an event stream)
    reads       arrival stamps at the connection's read (`StampingConnector`, `ReadClock`)
    sse         the incremental SSE parser, with its line and event caps
    apis/       one module per API kind: build the body, parse one event
    retry       refusals for load and the opt-in retry policy
    preflight   the API key, `/v1/models`, the model check: a spec's target -> an `Endpoint`
    tokenize    what the target's tokenizer charges a word (/tokenize, a local tokenizer, probes)
    looplag     how late the sending loop runs (every worker measures it; runs are judged by it)
"""

from latbench.client.apis import API_KINDS, ApiKind, RequestOptions
from latbench.client.preflight import resolve_endpoint
from latbench.client.reads import StampingConnector
from latbench.client.retry import NO_RETRY, RetryPolicy
from latbench.client.stream import Endpoint, StreamLimits, Timeouts, stream_request

__all__ = [
    "API_KINDS",
    "NO_RETRY",
    "ApiKind",
    "Endpoint",
    "RequestOptions",
    "RetryPolicy",
    "StampingConnector",
    "StreamLimits",
    "Timeouts",
    "resolve_endpoint",
    "stream_request",
]
