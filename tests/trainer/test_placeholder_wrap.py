"""The placeholder frame's text wraps at word boundaries and loses no word, however narrow the frame."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from beholder_plugin.trainer.views.placeholder import LABELS, MESSAGES, message, placeholder_frame

CHOICES = [*MESSAGES, "failed"]


def messages() -> list[str]:
    """Every message a placeholder can say: each choice, alone and with what update() was given instead."""
    said = {message(values, offered, "RuntimeError: shapes (3, 4) and (5, 6) do not match")
            for values in CHOICES for n in range(3) for offered in itertools.permutations(LABELS, n)}
    return sorted(said)


@pytest.mark.parametrize("chars", [30, 60, 100])
def test_wrapped_lines_keep_every_word_whole(chars):
    from beholder_plugin.trainer.views.placeholder import wrap_lines

    for text in messages():
        lines = wrap_lines(text, lambda line: len(line) <= chars)
        words = [line.split() for line in lines]
        # the same words in the same order, each whole on one line
        assert [w for line in words for w in line] == text.split()
        for line in lines:
            assert len(line) <= chars or len(line.split()) == 1, line
    # an indented (code) line keeps its indent on the lines it wraps onto
    assert wrap_lines("    a bb ccc", lambda line: len(line) <= 9) == ["    a bb", "    ccc"]


@pytest.mark.parametrize("values", CHOICES)
@pytest.mark.parametrize("width", [400, 768])
def test_rendered_text_stays_inside_the_frame(values, width):
    pixels = placeholder_frame(values, ("arrays",) if values == "frames" else (), "ValueError: " + "x" * 30,
                               width=width)
    assert pixels.shape[1] == width and pixels.shape[0] >= 128
    lit = np.argwhere(pixels > 0)
    # no text cut at the right edge or the bottom: a margin of black all round
    assert lit[:, 1].max() < width - 8 and lit[:, 0].max() < pixels.shape[0] - 8
    if width == 400:
        assert pixels.shape[0] > 128  # more lines than at 768 px: the frame grew to hold them
