"""The field types every section of the spec shares: durations people write as `30s` or
`500ms` (seconds inside), bounded so that no value can overflow a timer, and the strict model
base that refuses unknown fields and nan/inf.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_seconds(v: object) -> object:
    """`30`, `30s`, `500ms`, `2m`, `1h` -> seconds. Other types pass through to pydantic."""
    if isinstance(v, str):
        m = _DURATION.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a duration; write e.g. 30, 30s, 500ms, 2m or 1h")
        return float(m.group(1)) * _UNIT_S[m.group(2)]
    return v


Seconds = Annotated[float, BeforeValidator(parse_seconds), Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0, allow_inf_nan=False)]
# Bounded: a timeout of 1e300 s overflowed the event loop's timer and lost its requests whole.
Timeout = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0, le=DAY_S)]
UpToADay = Annotated[float, BeforeValidator(parse_seconds), Field(ge=0, le=DAY_S)]
Span = Annotated[float, BeforeValidator(parse_seconds), Field(ge=0, le=WEEK_S)]


class StrictModel(BaseModel):
    """The base of every spec section."""

    # nan and inf are refused in every float field: no field means anything by them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
