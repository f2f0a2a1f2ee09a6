"""The one YAML reader for documents people write: run specs, the service's config, `--sim`
values and the simulator's settings.

A spec is a small document written by a person, so anything far larger or deeper is a mistake
or an attack (a 392-byte YAML alias bomb expanded to 208 MB), refused before it can cost
memory; docs/spec.md lists the limits. The simulator reads its settings with the same reader,
and it may import only `latbench.shared`, so the reader lives here.
"""

from __future__ import annotations

from typing import IO, Any

import yaml

from latbench.shared.errors import SpecError

MAX_BYTES = 1 << 20
MAX_DEPTH = 32  # mappings and lists inside one another, the top level being 1


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (`*name`, and so `<<: *name` merges), and with a depth
    limit. An alias repeats a node without repeating its text, so a few hundred bytes of nested
    aliases expand to gigabytes once built; a spec never needs one."""

    def __init__(self, stream: str | bytes | IO[str] | IO[bytes]) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found the alias *{event.anchor}: YAML aliases and anchors are not allowed "
                "(write the value out)",
                event.start_mark,
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested more than {MAX_DEPTH} levels deep (mappings and lists inside one another)",
                self.peek_event().start_mark,
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str | bytes) -> Any:
    """`yaml.safe_load` without aliases and at most MAX_DEPTH deep; the size is the caller's to
    check. Raises what PyYAML raises: yaml.YAMLError, and plain exceptions on some malformed
    scalars, for callers that word their own errors (the simulator's)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass


def load_yaml(text: str | bytes, what: str) -> Any:
    """A YAML or JSON document (YAML is a superset of JSON: one reader for both) under the
    spec limits: at most MAX_BYTES, MAX_DEPTH deep, no aliases; else SpecError."""
    size = len(text.encode(errors="replace")) if isinstance(text, str) else len(text)
    if size > MAX_BYTES:
        raise SpecError(f"{what} is over {MAX_BYTES // 1024} KiB; a spec is a small document")
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{what} is not valid YAML/JSON: {e}") from None
    except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError) as e:
        # PyYAML's constructors raise plain exceptions on some malformed scalars (`!!int` with
        # no digits: IndexError; an integer of over 4300 digits: ValueError).
        raise SpecError(f"{what} is not valid YAML/JSON: {type(e).__name__}: {e}") from None
