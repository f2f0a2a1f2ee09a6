"""The spec's `workload.images`: how many generated images each chat request carries, their
resolution and format (workload/images.py makes them).

Sizes are bounded where they stop meaning anything (a side over 8192 px) and where one request
would carry more than `MAX_REQUEST_IMAGE_BYTES` of images, so a typo in a resolution is a spec
error naming the field, not a worker building gigabytes of noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from latbench.shared.dist import Dist
from latbench.spec.fields import StrictModel
from latbench.workload.images import (
    MAX_IMAGES,
    MAX_REQUEST_IMAGE_BYTES,
    MAX_SIDE,
    ImageFormat,
    ImageMaker,
    bytes_bound,
    count_bound,
    has_jpeg,
)

if TYPE_CHECKING:
    from latbench.spec.workload import WorkloadSpec

MIB = 1024**2


class ImagesSpec(StrictModel):
    count: Dist = Field(
        default_factory=lambda: Dist(mean=1),
        description="images per request (a distribution; a draw of 0 sends none), rounded",
    )
    width: int = Field(default=512, ge=1, le=MAX_SIDE, description="pixels")
    height: int = Field(default=512, ge=1, le=MAX_SIDE, description="pixels")
    format: ImageFormat = Field(
        default="png",
        description="png (no dependency, 3 bytes a pixel) or jpeg (Pillow, the `images` extra; "
        "~0.6 bytes a pixel)",
    )

    @field_validator("format")
    @classmethod
    def _encoder(cls, fmt: ImageFormat) -> ImageFormat:
        if fmt == "jpeg" and not has_jpeg():
            raise ValueError(
                "jpeg needs Pillow, which is not installed: pip install 'latbench[images]' "
                "(png needs nothing)"
            )
        return fmt

    @model_validator(mode="after")
    def _bounded(self) -> ImagesSpec:
        most = count_bound(self.count)
        if most is None:
            raise ValueError(
                f"count {self.count}: set count.max, the most images a request may carry "
                f"(at most {MAX_IMAGES}), so its bytes are bounded (on the command line: a "
                "fixed count or uniform:MIN,MAX)"
            )
        if round(most) > MAX_IMAGES:
            raise ValueError(
                f"count: up to {round(most)} images a request, over the cap of {MAX_IMAGES}"
            )
        self.check_bytes(1)
        return self

    def most_images(self) -> int:
        most = count_bound(self.count)
        assert most is not None  # the model's check refuses an unbounded count
        return round(most)

    def check_bytes(self, turns: int) -> None:
        """A request's images within the cap, when it resends those of `turns` user turns."""
        most = turns * self.most_images()
        each = bytes_bound(self.width, self.height, self.format)
        if most * each > MAX_REQUEST_IMAGE_BYTES:
            resent = "" if turns == 1 else f" (a session's last turn resends {turns} turns')"
            lower = "count (its max) or resolution" if turns == 1 else "count, resolution or turns"
            raise ValueError(
                f"up to {most} {self.format} images of {self.width}x{self.height}{resent} "
                f"({each / MIB:.1f} MiB each) is {most * each / MIB:.1f} MiB a request, over the "
                f"cap of {MAX_REQUEST_IMAGE_BYTES // MIB} MiB: lower the {lower}"
            )

    def maker(self, seed: int) -> ImageMaker:
        return ImageMaker(self.count, self.width, self.height, self.format, seed)


def check_session_images(w: WorkloadSpec) -> None:
    """With synthetic sessions, a turn's request resends every earlier turn's images: the most
    turns a session has times the images a turn may add must stay within the cap. A ShareGPT
    conversation's turns are known only once read: its sessions check their own plan
    (workload/images.py)."""
    if w.images is None or w.sessions is None or w.sessions.turns is None:
        return
    turns = count_bound(w.sessions.turns)
    if turns is not None:
        try:
            w.images.check_bytes(max(1, round(turns)))
        except ValueError as e:
            raise ValueError(f"images: {e}") from None
