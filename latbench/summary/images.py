"""What a run's requests carried in images: how many and how many bytes, from the records.

A vision request's TTFT grows with its images (each is decoded, resized and encoded into
hundreds of tokens before the first output token), and its upload with their bytes, so a
summary of an image run says how much of either each request carried. Counted over the
measure-phase requests, failed ones too: what the client sent, as the workload asked it
(records `images` and `image_bytes`, the decoded bytes; the base64 on the wire is 4/3 of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from latbench.records.record import Record
from latbench.summary.validity import rounded


@dataclass(frozen=True)
class ImageCounts:
    requests: int  # measure-phase requests
    with_images: int  # of those, the ones that carried at least one
    images: int
    bytes: int  # decoded image bytes

    @property
    def per_request(self) -> float:
        return self.images / self.requests if self.requests else 0.0

    @property
    def bytes_per_request(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0

    @property
    def bytes_per_image(self) -> float | None:
        return self.bytes / self.images if self.images else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "with_images": self.with_images,
            "total": self.images,
            "per_request_mean": rounded(self.per_request, 6),
            "bytes_total": self.bytes,
            "bytes_per_request_mean": rounded(self.bytes_per_request, 3),
            "bytes_per_image_mean": rounded(self.bytes_per_image, 3),
        }

    def describe(self) -> str:
        """One line for people (the terminal, HTML and Markdown summaries)."""
        each = self.bytes_per_image
        size = "" if each is None else f", {_size(each)} each"
        return (
            f"{self.images:,} images in {self.with_images:,} of {self.requests:,} requests "
            f"(mean {self.per_request:.2f} a request{size}; {_size(self.bytes)} in all)"
        )


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def image_counts(measured: Sequence[Record]) -> ImageCounts | None:
    """The images the measured requests carried; None when none carried any (a text run's
    summary says nothing of images)."""
    carried = [r for r in measured if r.images]
    if not carried:
        return None
    return ImageCounts(
        requests=len(measured),
        with_images=len(carried),
        images=sum(r.images for r in carried),
        bytes=sum(r.image_bytes for r in carried),
    )
