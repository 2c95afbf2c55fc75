"""The dashboard settings: their defaults and the one validator every writer goes through."""

from __future__ import annotations

from typing import Any

from beholder_plugin.protocol.colormaps import COLORMAPS
from beholder_plugin.protocol.filters import MAX_FILTER_CHARS, FilterError, compile_filter
from beholder_plugin.protocol.names import CONFIG_VERSION

VALUES = ("trainable_variables", "gradients", "activations", "arrays", "frames")
MODES = ("current", "variance")
SCALINGS = ("layer", "network")
SECTION_SIZES = ("fixed", "proportional")

DEFAULT_CONFIG: dict[str, Any] = {
    "values": "trainable_variables",
    "mode": "variance",
    "scaling": "layer",
    "window_size": 15,
    "FPS": 10,
    "is_recording": False,
    "show_all": False,
    "colormap": "magma",
    # The history ring: the last history_seconds of frames, at most history_mb MB; 0 turns it off.
    "history_mb": 256,
    "history_seconds": 600,
    # Which sections are gathered and shown (protocol/filters.py): plain text found in section names, or
    # /a regular expression/ (RE2), then one hidden name scope per line ("" = all).
    "filter": "",
    # Section heights: "fixed" 128 px as the original, or "proportional" to the array's size.
    "section_size": "fixed",
}

# key -> ("choice", allowed) | ("int", lo, hi) | ("bool",)
_RULES: dict[str, tuple] = {
    "values": ("choice", VALUES),
    "mode": ("choice", MODES),
    "scaling": ("choice", SCALINGS),
    "colormap": ("choice", COLORMAPS),
    "window_size": ("int", 2, 20),
    "FPS": ("int", 0, 30),
    "is_recording": ("bool",),
    "show_all": ("bool",),
    "history_mb": ("int", 0, 1 << 20),
    "history_seconds": ("int", 0, 7 * 24 * 3600),
    "filter": ("filter",),
    "section_size": ("choice", SECTION_SIZES),
}


class ConfigError(ValueError):
    """A config document or a change to it that breaks the rules; the message names the key."""


SHOWN_CHARS = 60  # a value or key quoted in a message is cut to this (config.json may hold 64 KB of one)
SHOWN_KEYS = 5  # unknown keys named in the one message about them


def shown(value: Any) -> str:
    """repr(value) cut to SHOWN_CHARS, for messages that are logged once per change of config.json."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _check_value(key: str, value: Any) -> None:
    """Raise ConfigError unless value is allowed for key."""
    rule = _RULES[key]
    if rule[0] == "choice":
        if not isinstance(value, str) or value not in rule[1]:
            allowed = ", ".join(repr(v) for v in rule[1])
            raise ConfigError(f"{shown(key)} must be one of {allowed}, not {shown(value)}")
    elif rule[0] == "int":
        lo, hi = rule[1], rule[2]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{shown(key)} must be a whole number from {lo} to {hi}, not {shown(value)}")
    elif rule[0] == "filter":
        if not isinstance(value, str) or len(value) > MAX_FILTER_CHARS:
            raise ConfigError(f"{key!r} must be text of at most {MAX_FILTER_CHARS} characters")
        try:  # the trainer's own parser (RE2 for /.../): what is accepted here, the trainer can run
            compile_filter(value)
        except FilterError as exc:
            raise ConfigError(f"{key!r}: {exc}") from None
    elif not isinstance(value, bool):
        raise ConfigError(f"{shown(key)} must be true or false, not {shown(value)}")


def validate_changes(changes: Any) -> dict[str, Any]:
    """Check a partial update (as the dashboard sends it) and return the accepted keys.

    Unknown keys, wrong types and out-of-range values are refused; nothing is
    accepted unless everything is.
    """
    if not isinstance(changes, dict):
        raise ConfigError("the config must be a JSON object")
    accepted: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "version":
            if value != CONFIG_VERSION:
                raise ConfigError(f"'version' must be {CONFIG_VERSION}, not {shown(value)}")
            continue
        if key not in _RULES:
            known = ", ".join(sorted(_RULES))
            raise ConfigError(f"unknown key {shown(key)} (known keys: {known})")
        _check_value(key, value)
        accepted[key] = value
    return accepted


def parse_config_document(doc: Any) -> tuple[dict[str, Any], list[str]]:
    """Read a config.json document leniently: the full config plus a list of problems ignored.

    Used by readers of the file (trainer, server). Missing keys take their
    defaults and unknown keys (say, from a newer version) are ignored, but a
    known key with a bad value makes the whole document invalid, because a
    half-applied config would surprise the user more than the last good one.
    """
    if not isinstance(doc, dict):
        raise ConfigError("config.json must hold a JSON object")
    problems = []
    version = doc.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        problems.append(f"config version {shown(version)} is not {CONFIG_VERSION}; reading known keys")
    config = dict(DEFAULT_CONFIG)
    unknown = []
    for key, value in doc.items():
        if key == "version":
            continue
        if key not in _RULES:
            unknown.append(key)
            continue
        _check_value(key, value)
        config[key] = value
    if unknown:  # one problem however many (each is logged once per change of the file)
        named = ", ".join(shown(key) for key in unknown[:SHOWN_KEYS])
        more = f" and {len(unknown) - SHOWN_KEYS} more" if len(unknown) > SHOWN_KEYS else ""
        problems.append(f"unknown key{'s' if len(unknown) > 1 else ''} {named}{more} ignored")
    return config, problems


def config_document(config: dict[str, Any]) -> dict[str, Any]:
    """The JSON object written to config.json for a full, valid config."""
    return {"version": CONFIG_VERSION, **{key: config[key] for key in DEFAULT_CONFIG}}
