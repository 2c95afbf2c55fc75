"""The section filter: which section names a run's ``filter`` setting keeps, in time linear in the name.

The setting is one string (docs/protocol.md):

- its first line is what the dashboard's "Sections" box holds: text between
  slashes (``/conv|dense/``) is a regular expression searched in the name,
  anything else is plain text found anywhere in it (``([`` included); empty
  keeps every name;
- each further line is a hidden name scope: a name equal to it, or that goes
  on after it with ``/`` or ``.``, is left out.

Regular expressions are read by RE2 (the ``google-re2`` package), which never
backtracks: a search takes time linear in the name whatever the expression, so
no setting can stall the training thread. The plugin checks a filter with this
same module before writing it, so what it accepts the trainer can run.
"""

from __future__ import annotations

import re2

# A filter is at most this many characters (the settings validator's limit, shared with the dashboard).
MAX_FILTER_CHARS = 1000
# Names remembered per filter (one dict lookup then); past this many the memory starts again.
MAX_REMEMBERED_NAMES = 65536
# RE2's own budget for one compiled expression (its default): a larger program is refused, not built.
_RE2_MAX_MEM = 8 << 20
# Instructions an expression compiles to at most. RE2 never backtracks, but a big program can outgrow
# its DFA's memory, and the NFA it then falls back to costs program size x name length: /(.{1,30}){30}z/
# (8,135 instructions) took 1.9 s over 50 names of 1,000 characters, (.{1,30}){20}z (5,425) 29 ms.
MAX_PROGRAM_SIZE = 5000
_SCOPE_ENDS = ("/", ".")


class FilterError(ValueError):
    """A filter that cannot be used: not text, too long, or a regular expression RE2 does not read."""


def _options() -> re2.Options:
    """RE2's options: errors raised here rather than printed to stderr, the default memory budget."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _RE2_MAX_MEM
    return options


def is_expression(text: str) -> bool:
    """Whether the box's text is a regular expression (between slashes) rather than plain text."""
    return len(text) >= 2 and text.startswith("/") and text.endswith("/")


class SectionFilter:
    """A parsed filter: ``search(name)`` says whether the name is kept, each name worked out once."""

    def __init__(self, pattern: str):
        if not isinstance(pattern, str):
            raise FilterError(f"a filter is a string, not {type(pattern).__name__}")
        if len(pattern) > MAX_FILTER_CHARS:
            raise FilterError(f"a filter is at most {MAX_FILTER_CHARS} characters, not {len(pattern)}")
        self.pattern = pattern
        box, *scopes = pattern.split("\n")
        self.text = box
        self.hidden = tuple(scope for scope in scopes if scope)
        self._regex = None
        if is_expression(box):
            try:
                self._regex = re2.compile(box[1:-1], _options())
            except re2.error as exc:
                detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(
                    exc.args[0], bytes) else str(exc)
                raise FilterError(f"{box} is not a valid regular expression (RE2 syntax): {detail}") from None
            if self._regex.programsize > MAX_PROGRAM_SIZE:
                size = self._regex.programsize
                raise FilterError(f"{box} is too complex a regular expression ({size} instructions, at "
                                  f"most {MAX_PROGRAM_SIZE}): repeat less, e.g. .* for .{{1,30}}")
        self._known: dict[str, bool] = {}

    def search(self, name: str) -> bool:
        """Whether the filter keeps this section name (remembered: a second call is a dict lookup)."""
        known = self._known.get(name)
        if known is None:
            if len(self._known) >= MAX_REMEMBERED_NAMES:
                self._known = {}
            known = self._known[name] = self.keeps(name)
        return known

    def keeps(self, name: str) -> bool:
        """Work out whether the name is kept: under no hidden scope, and found by the box's text."""
        for scope in self.hidden:
            if name.startswith(scope) and (len(name) == len(scope) or name[len(scope)] in _SCOPE_ENDS):
                return False
        if self._regex is not None:
            return self._regex.search(name) is not None
        return self.text in name

    def __repr__(self) -> str:
        return f"SectionFilter({self.pattern!r})"


def compile_filter(pattern: str) -> SectionFilter | None:
    """The filter for a setting (None for "": every section), or FilterError saying why it is unusable."""
    return SectionFilter(pattern) if pattern else None
