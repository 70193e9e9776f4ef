"""Texts for the interventional grid: built-in English sets and user text files.

A text is an id (the grid's `content` label) and the words to speak. The built-in
sets live in `subspaces/data/texts/`:

- `keywords`: the 25 non-digit command words of Speech Commands (yes, no, up, ...);
- `words`: the keywords plus about 200 common concrete single words;
- `sentences`: about 280 Harvard-style sentences of 3 to 12 words.

None of them holds a digit, a digit word (zero..nine), another number word, or a
homophone of a digit word (`FORBIDDEN_WORDS`): the real test set for content is spoken
digits, which a model must never have heard during training. A user's own file (one
text per line) is read the same way; it is not held to that rule.

>>> [t.id for t in load_texts("keywords")[:3]]
['yes', 'no', 'up']
>>> forbidden_words("Seven men had 3 cats and won")
['seven', '3', 'won']
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SubspacesError

__all__ = [
    "sample_texts",
    "DEFAULT_TEXT_SET",
    "FORBIDDEN_WORDS",
    "TEXT_SETS",
    "Text",
    "TextError",
    "forbidden_words",
    "load_texts",
    "text_id",
]

TEXT_SETS = ("keywords", "words", "sentences")
DEFAULT_TEXT_SET = "sentences"

# The spoken-digit test sets (FSDD, Speech Commands digits) say zero..nine. A model
# trained on texts that contain those words, other number words built on them, or
# words that sound the same in isolation ("won", "to", "for", "ate", "oh") would have
# heard the test content; so the built-in sets leave all of these out.
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NUMBER_WORDS = (
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
    "thousand", "million", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
    "ninth", "once", "twice", "someone", "anyone", "everyone", "noone", "none",
)
_HOMOPHONES = ("oh", "owe", "o", "won", "to", "too", "tu", "for", "fore", "ate", "nein", "sicks")
FORBIDDEN_WORDS = frozenset(_DIGIT_WORDS + _NUMBER_WORDS + _HOMOPHONES)

_MAX_ID_CHARS = 40


class TextError(SubspacesError, ValueError):
    """A text set or file that cannot be used; the message names it and the problem."""


@dataclass(frozen=True)
class Text:
    """One text of the grid: `id` is its content label, `text` the words spoken."""

    id: str
    text: str


def forbidden_words(text: str) -> list[str]:
    """The words of `text` that a digit test set could have heard: digits and
    `FORBIDDEN_WORDS`, in the order they occur (case-insensitive).

    >>> forbidden_words("The boy's canoe")
    []
    >>> forbidden_words("Four o'clock, 12 ships")
    ['four', '12']
    """
    found = []
    for token in re.findall(r"[A-Za-z0-9']+", text.lower()):
        word = token.strip("'")
        if word.endswith("'s"):
            word = word[:-2]
        if word in FORBIDDEN_WORDS or any(ch.isdigit() for ch in word):
            found.append(word)
    return found


def text_id(text: str) -> str:
    """A stable, file-name-safe content id made from the text itself.

    Short texts give their lower-cased words joined by '-'; longer ones are cut and get
    6 hex digits of the text's SHA-1, so two long texts with the same start stay apart.

    >>> text_id("Yes")
    'yes'
    >>> text_id("The birch canoe slid on the smooth planks.")
    'the-birch-canoe-slid-on-the-smoot-200026'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug:
        raise TextError(f"text {text!r} has no letters or digits to make an id from")
    if len(slug) <= _MAX_ID_CHARS:
        return slug
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
    return slug[: _MAX_ID_CHARS - 7].rstrip("-") + "-" + digest


def _read_lines(lines: list[str], name: str) -> list[Text]:
    texts: list[Text] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        text = Text(id=text_id(line), text=line)
        if text.id in first_line:
            raise TextError(
                f"{name}: line {number} ({line!r}) repeats the text of line {first_line[text.id]} "
                f"(both get content id {text.id!r}); remove one of them"
            )
        first_line[text.id] = number
        texts.append(text)
    if not texts:
        raise TextError(f"{name}: holds no texts (one text per line; '#' starts a comment)")
    return texts


def load_texts(name_or_path: str | Path) -> list[Text]:
    """Read a built-in set (`TEXT_SETS`) or a UTF-8 file with one text per line.

    Blank lines and lines starting with '#' are skipped. Two lines that give the same
    content id are an error (a repeated text would be two contents with one label).

    >>> len(load_texts("sentences")) >= 200
    True
    """
    if str(name_or_path) in TEXT_SETS:
        name = str(name_or_path)
        resource = resources.files("subspaces") / "data" / "texts" / f"{name}.txt"
        lines = resource.read_text(encoding="utf-8").splitlines()
        texts = _read_lines(lines, f"built-in text set {name!r}")
        if name == "words":
            keyword_ids = {t.id for t in texts}
            texts = [t for t in load_texts("keywords") if t.id not in keyword_ids] + texts
        return texts
    path = Path(name_or_path)
    if not path.is_file():
        raise TextError(
            f"{name_or_path}: neither a built-in text set ({', '.join(TEXT_SETS)}) nor an existing text file"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise TextError(f"{path}: not UTF-8 text ({error})") from error
    return _read_lines(lines, str(path))


def sample_texts(texts: Sequence[Text], n: int, seed: int = 0) -> list[Text]:
    """A seeded random subset of `n` texts, kept in their original order (all if n >= len).

    >>> [t.id for t in sample_texts(load_texts("keywords"), 3, seed=0)] == [t.id for t in sample_texts(load_texts("keywords"), 3, seed=0)]
    True
    """
    if n >= len(texts):
        return list(texts)
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
    return [texts[i] for i in keep]
