"""The section filter (protocol/filters.py): plain text or /RE2/, hidden scopes, never a stalled update()."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import set_config

from beholder_plugin import Beholder, ConfigError
from beholder_plugin.protocol.filters import MAX_FILTER_CHARS, FilterError, compile_filter
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.protocol.settings import validate_changes
from beholder_plugin.trainer import gather

# Long enough that Python's re would backtrack for longer than the universe has existed.
EVIL_NAME = "a" * 60 + "!"


def shown_names(run_dir) -> list[str]:
    """The section names of the frame on disk."""
    return [rec["name"] for rec in read_frame_file(run_dir).sections]


def test_plain_text_with_regex_characters_is_a_substring(run_dir):
    """`([` was refused as an invalid regular expression; as plain text it is found in names."""
    assert validate_changes({"filter": "(["}) == {"filter": "(["}
    set_config(run_dir, values="arrays", mode="current", FPS=30, filter="([")
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays={"odd([name": np.ones(3), "conv": np.ones(3), "(x[": np.ones(2)})
    assert shown_names(run_dir) == ["odd([name"]


def test_text_between_slashes_is_a_regular_expression(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30, filter="/^(conv|dense)/kernel$/")
    names = ["conv/kernel", "conv/bias", "dense/kernel", "xconv/kernel"]
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays={k: np.ones(2) for k in names})
    assert shown_names(run_dir) == ["conv/kernel", "dense/kernel"]


def test_hidden_scopes_follow_the_first_line(run_dir):
    """Lines after the first are hidden scopes: the name itself and names under it (/ or .)."""
    set_config(run_dir, values="arrays", mode="current", FPS=30, filter="kernel\nseq/conv1\nhead")
    names = ["seq/conv1/kernel", "seq/conv10/kernel", "head.kernel", "header/kernel", "seq/dense/kernel", "x"]
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays={k: np.ones(2) for k in names})
    assert shown_names(run_dir) == ["seq/conv10/kernel", "header/kernel", "seq/dense/kernel"]


def _update_in_thread(beholder: Beholder, arrays: dict) -> threading.Thread:
    """Run one update() on a daemon thread (a backtracking engine would never return)."""
    thread = threading.Thread(target=beholder.update, kwargs={"arrays": arrays}, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("pattern", ["/(a+)+$/", "/^(\\w+/?)+$/", "/(a|aa)*(b|a)*c/"])
def test_a_nested_quantifier_cannot_stall_update(run_dir, pattern):
    """Catastrophic backtracking in Python's re; RE2 answers at once (the join has room to spare)."""
    assert validate_changes({"filter": pattern}) == {"filter": pattern}
    set_config(run_dir, values="arrays", mode="current", FPS=30, filter=pattern)
    names = [EVIL_NAME, "bert/encoder/layer_11/output/dense/kernel:0" * 3, "a" * 999 + "!"]
    with Beholder(run_dir, strict=True, background=False) as beholder:
        thread = _update_in_thread(beholder, {name: np.ones(2) for name in names})
        thread.join(60)
        assert not thread.is_alive(), "update() is still matching the filter"
    assert read_frame_file(run_dir).sections


def test_the_longest_filter_against_the_longest_names_is_accepted_and_runs(run_dir):
    """A 1,000-character expression against 1,000-character names: validated, then matched."""
    pattern = "/" + "(a|b?)*" * ((MAX_FILTER_CHARS - 3) // 7) + "c/"
    assert len(pattern) <= MAX_FILTER_CHARS
    assert validate_changes({"filter": pattern})
    set_config(run_dir, values="arrays", mode="current", FPS=30, filter=pattern)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        thread = _update_in_thread(beholder, {"ab" * 500: np.ones(2), "ab" * 499 + "c": np.ones(2)})
        thread.join(60)
        assert not thread.is_alive()
    assert shown_names(run_dir) == ["ab" * 499 + "c"]


def test_a_filter_works_out_each_name_once(run_dir):
    """Matching results are kept per name: later frames (and hooks) look them up, never match again."""
    pattern = "/kernel/"
    sections = compile_filter(pattern)
    calls = []
    real = sections.keeps
    sections.keeps = lambda name: calls.append(name) or real(name)
    gather.section_filter.cache_clear()
    original = gather.compile_filter
    gather.compile_filter = lambda text: sections if text == pattern else original(text)
    try:
        set_config(run_dir, values="arrays", mode="current", FPS=30, filter=pattern)
        with Beholder(run_dir, strict=True, background=False) as beholder:
            for _ in range(5):
                beholder.frame_due_now()
                assert beholder.update(arrays={"a/kernel": np.ones(2), "a/bias": np.ones(2)})
            for _ in range(1000):
                assert sections.search("a/kernel") and not sections.search("a/bias")
    finally:
        gather.compile_filter = original
        gather.section_filter.cache_clear()
    assert sorted(calls) == ["a/bias", "a/kernel"]


def test_watch_hooks_look_names_up_instead_of_matching(run_dir):
    """torch activations with a filter: the filter's work is once per module name, not per hook call."""
    torch = pytest.importorskip("torch")
    pattern = "/^0$/"
    set_config(run_dir, values="activations", mode="current", FPS=30, filter=pattern)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    sections = gather.section_filter(pattern)
    calls = []
    real = sections.keeps
    sections.keeps = lambda name: calls.append(name) or real(name)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        for _ in range(6):
            beholder.frame_due_now()
            model(torch.ones(1, 4))
            beholder.update()
    gather.section_filter.cache_clear()
    assert shown_names(run_dir) == ["0"]
    assert len(calls) == len(set(calls)) == 3  # each module once, over six steps


@pytest.mark.parametrize("pattern", ["/(/", "/(?=x)/", "/(a)\\1/", "/a{1001}/", "x" * (MAX_FILTER_CHARS + 1)])
def test_what_re2_cannot_read_is_refused_with_a_reason(pattern):
    with pytest.raises(ConfigError, match="'filter'"):
        validate_changes({"filter": pattern})
    with pytest.raises(FilterError):
        compile_filter(pattern)


def test_an_expression_too_big_for_re2s_dfa_is_refused_saying_so():
    """/(.{1,30}){30}z/ compiles to 8,135 instructions: past RE2's DFA memory it fell back to its NFA, and
    one update() took 3.5 s over 50 names of 1,000 characters. Refused now; a big realistic one is not."""
    with pytest.raises(ConfigError, match=r"too complex a regular expression \(8135 instructions"):
        validate_changes({"filter": "/(.{1,30}){30}z/"})
    pattern = "/^(encoder|decoder)/layer(1[0-9]|2[0-3])/(attention|mlp)/.{1,200}kernel$/"
    assert validate_changes({"filter": pattern}) == {"filter": pattern}


@given(st.text(max_size=40).filter(lambda t: "\n" not in t and not (len(t) >= 2 and t[0] == t[-1] == "/")),
       st.lists(st.text(max_size=30), max_size=5))
def test_plain_text_is_always_accepted_and_means_substring(text, names):
    found = compile_filter(text)
    assert validate_changes({"filter": text}) == {"filter": text}
    for name in names:
        assert (found is None or found.search(name)) == (text in name)
