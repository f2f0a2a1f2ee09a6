"""Secrets kept in files: the target's API key (`target.api_key_file`) and the service's bearer
token (`auth.token_file`), read by one function so both forgive the same editor's line end and
fail with the same message."""

from __future__ import annotations

from pathlib import Path

from latbench.shared.errors import SpecError


def read_secret_file(path: Path, field: str) -> str:
    """A secret kept in a file (a mounted secret, a key file), without the line end an editor
    or `echo` leaves; a file that cannot be read is a SpecError naming the `field` that named it.
    The target's API key and the service's bearer token are read this way."""
    try:
        return path.read_text().strip()
    except OSError as e:
        raise SpecError(f"{field}: cannot read {path}: {e.strerror}") from None
