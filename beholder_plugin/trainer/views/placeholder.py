"""Placeholder frames that tell the user, in words, what to pass to update()."""

from __future__ import annotations

import functools

import numpy as np

MESSAGES = {
    "arrays": (
        "Values: b.update(arrays=...) is selected, but no arrays were passed.\n"
        "Pass a list or dict of arrays on each step, for example:\n"
        "    beholder.update(arrays={'conv1/grad': g1, 'dense/grad': g2})"
    ),
    "frames": (
        "Values: b.update(frame=...) is selected, but no frame was passed.\n"
        "Pass a 2-D array, an H x W x 3 uint8 image, or a function returning one:\n"
        "    beholder.update(frame=lambda: first_image_of_batch)"
    ),
    "gradients": (
        "Values: gradients is selected, but Beholder is not watching a model.\n"
        "Call beholder.watch(model) once (a torch module), or pass them yourself:\n"
        "    beholder.update(arrays={n: p.grad for n, p in model.named_parameters()})\n"
        "and pick \"Arrays\" (the Keras demo passes its gradients that way)."
    ),
    "activations": (
        "Values: activations is selected, but Beholder is not watching a model.\n"
        "Call beholder.watch(model) once (torch), or beholder.watch(model, probe=x) (Keras),\n"
        "or pass layer outputs yourself, update(arrays={'conv1': out1}), and pick \"Arrays\"."
    ),
    "trainable_variables": (
        "Values: trainable variables is selected, but Beholder does not know them.\n"
        "Tell it what they are: beholder.watch(model), Beholder(logdir, variables=model),\n"
        "or on each step beholder.update(variables=model) (TF1: beholder.update(session=sess))"
    ),
}


# A placeholder's ``values`` while the model has no trainable variables yet (not built: no failure).
UNBUILT = "unbuilt"
MESSAGES[UNBUILT] = (
    "The model has no trainable variables yet: a Keras model gets them when it is built\n"
    "(by its first call, or an Input in it); a torch Lazy layer at its first forward.\n"
    "Frames start once it has them: nothing to do."
)

# The Values choices as the dashboard labels them.
LABELS = {
    "trainable_variables": "Trainable variables",
    "gradients": "Gradients",
    "activations": "Activations",
    "arrays": "Arrays",
    "frames": "Image",
}
GIVEN = {"trainable_variables": "variables", "arrays": "arrays", "frames": "a frame"}
MAX_DETAIL_CHARS = 90
# Where the text starts (px from the left and top; the right margin is the left one), and px between lines.
TEXT_LEFT, TEXT_TOP, TEXT_SPACING = 14, 20, 8


def message(values: str, offered: tuple[str, ...] = (), detail: str | None = None) -> str:
    """What the placeholder says: what to pass, or which choice shows what update() was given."""
    if values == "failed":
        why = (detail or "see the trainer's log")[:MAX_DETAIL_CHARS]
        return ("Beholder.update() failed, so this run has no new frame. The error:\n"
                f"    {why}\n"
                "Training goes on; the first failure's traceback is in the trainer's log.")
    others = [name for name in offered if name != values and name in LABELS]
    if not others or values == UNBUILT:
        return MESSAGES[values]
    first = others[0]
    given = " and ".join(GIVEN.get(name, name) for name in others)
    return (f"Values: {LABELS.get(values, values).lower()} is selected, but update() was given {given}.\n"
            f"Pick \"{LABELS[first]}\" under Values in the dashboard (the button above the frame does it),\n"
            f"or start the run with Beholder(logdir, values=\"{first}\"), or pass what is selected.")


def wrap_lines(text: str, fits) -> list[str]:
    """The text's lines, broken at spaces where fits(line) is false; words stay whole, indents stay."""
    lines = []
    for line in text.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split()
        current = indent + (words[0] if words else "")
        for word in words[1:]:
            if fits(f"{current} {word}"):
                current = f"{current} {word}"
            else:
                lines.append(current)
                current = indent + word
        lines.append(current)
    return lines


@functools.lru_cache(maxsize=64)
def placeholder_frame(values: str, offered: tuple[str, ...] = (), detail: str | None = None,
                      width: int = 768, height: int = 128) -> np.ndarray:
    """A grayscale image (white text on black) explaining what to pass for this values choice.

    Lines too wide for ``width`` wrap at word boundaries, and the image grows taller when they need it.
    """
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    room = width - 2 * TEXT_LEFT
    text = "\n".join(wrap_lines(message(values, offered, detail), lambda line: font.getlength(line) <= room))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    bottom = measure.multiline_textbbox((TEXT_LEFT, TEXT_TOP), text, font=font, spacing=TEXT_SPACING)[3]
    image = Image.new("L", (width, max(height, int(bottom) + TEXT_TOP)), 0)
    draw = ImageDraw.Draw(image)
    draw.multiline_text((TEXT_LEFT, TEXT_TOP), text, fill=255, font=font, spacing=TEXT_SPACING)
    pixels = np.asarray(image, dtype=np.uint8)
    pixels.setflags(write=False)
    return pixels
