"""Haystacks for the retrieval evaluations, and prompts built to an exact token count.

Three kinds of haystack, as RULER defines them:
- ``repeat``: one fixed paragraph of noise repeated ("The grass is green. ..."), the classic passkey haystack;
- ``essay``: essay-like prose, sentence after sentence. RULER uses Paul Graham's essays; so that nothing on disk is needed
  (tests, fresh clones) the default essay is generated here from a small grammar of expository English sentences
  (deterministic from a seed), and ``--haystack_file`` replaces it with the sentences of any text file;
- ``needle``: the haystack is made of distractor needles (other keys with other values), built by the task.

Lengths are counted in tokens of the run's tokenizer. A prompt is assembled from separately tokenized pieces —
head, haystack units, needle block, tail — so its length can be hit exactly: the haystack is the first H tokens of the
stream of unit tokens, with H whatever the other pieces leave, and the needles go in at the unit (sentence) boundary
nearest to the requested depth. Equal lengths let every prompt of a (task, length) cell share one batch and one
compiled shape, and no padding ever enters a model's state.
"""

from __future__ import annotations

import bisect
import dataclasses
import pathlib
import re
from collections.abc import Callable, Sequence

import numpy as np

REPEAT_UNIT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Essay grammar: an opening (often empty), a subject, a verb phrase, an object, an ending. About 5 million distinct
# sentences with the vocabulary of essays about work, ideas and building things; no digits, so no haystack sentence can
# contain a needle's value.
_OPENINGS = (
    "",
    "",
    "",
    "In practice, ",
    "Most of the time, ",
    "It turns out that ",
    "What surprised me is that ",
    "In the long run, ",
    "As a rule, ",
    "Oddly enough, ",
    "For better or worse, ",
    "If you look closely, ",
    "The strange thing is that ",
    "Historically, ",
    "Sooner or later, ",
    "In my experience, ",
    "Put another way, ",
    "At first glance, ",
)
_SUBJECTS = (
    "the best founders",
    "most investors",
    "good programmers",
    "young writers",
    "small companies",
    "large organisations",
    "the people who build things",
    "a new idea",
    "an ambitious project",
    "most schools",
    "the average reader",
    "a careful essay",
    "every successful startup",
    "the first users",
    "a good question",
    "experienced editors",
    "most cities",
    "the smartest people I know",
    "a working prototype",
    "the market",
    "curious students",
    "a clever hack",
    "old institutions",
    "the early adopters",
)
_VERBS = (
    "tend to ignore",
    "rarely understand",
    "eventually discover",
    "learn a lot from",
    "depend on",
    "underestimate",
    "slowly replace",
    "are shaped by",
    "quietly reward",
    "keep coming back to",
    "struggle with",
    "make room for",
    "often overlook",
    "can be fooled by",
    "end up resembling",
    "care deeply about",
    "spend years on",
    "are suspicious of",
    "try to avoid",
    "should pay attention to",
)
_OBJECTS = (
    "the problems they care about",
    "small details",
    "unfashionable ideas",
    "the opinions of outsiders",
    "their own mistakes",
    "what users actually do",
    "the shape of the work",
    "questions nobody asks",
    "the boring parts",
    "a handful of good books",
    "the habits of their peers",
    "ideas that seem wrong at first",
    "the cost of waiting",
    "simple tools",
    "the way things used to be done",
    "what they were taught in school",
    "problems that look like toys",
    "the advice of experts",
    "the pressure to conform",
    "long conversations",
    "the taste of their customers",
    "the limits of planning",
)
_ENDINGS = (
    "",
    "",
    " when they start",
    " in the long run",
    " for years",
    " more than they admit",
    " without noticing",
    " at the beginning",
    " once they have momentum",
    " when nobody is watching",
    " in surprising ways",
    " whether they like it or not",
)


def essay_sentence(rng: np.random.Generator) -> str:
    """One sentence of generated essay prose."""

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    opening = pick(_OPENINGS)
    subject = pick(_SUBJECTS)
    if not opening:
        subject = subject[0].upper() + subject[1:]
    return f"{opening}{subject} {pick(_VERBS)} {pick(_OBJECTS)}{pick(_ENDINGS)}."


def generated_essay(seed: int = 0) -> Callable[[int], str]:
    """Sentence i of the generated essay of `seed`, for any i ≥ 0 (sentences are drawn in order and kept, so the
    essay at one length is a prefix of the essay at every longer length)."""
    rng = np.random.default_rng([seed, 0xE55A])
    sentences: list[str] = []

    def sentence(index: int) -> str:
        while len(sentences) <= index:
            sentences.append(essay_sentence(rng))
        return sentences[index]

    return sentence


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (whitespace runs collapsed; a sentence ends at . ! or ? followed by whitespace)."""
    collapsed = " ".join(text.split())
    return [sentence for sentence in _SENTENCE_END.split(collapsed) if sentence]


def file_sentences(path: str | pathlib.Path) -> list[str]:
    """Sentences of a text file, for ``--haystack_file``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"haystack file {path} does not exist")
    sentences = split_sentences(path.read_text(encoding="utf-8", errors="replace"))
    if not sentences:
        raise ValueError(f"haystack file {path} holds no text")
    return sentences


class UnitTokens:
    """Token ids of haystack unit i, encoded once and cached (unit texts come from `unit_text(i)`, any i ≥ 0)."""

    def __init__(self, encode: Callable[[str], list[int]], unit_text: Callable[[int], str]) -> None:
        self._encode = encode
        self._unit_text = unit_text
        self._cache: list[list[int]] = []

    def __call__(self, index: int) -> list[int]:
        while len(self._cache) <= index:
            text = self._unit_text(len(self._cache))
            ids = list(self._encode(text))
            if not ids:
                raise ValueError(f"haystack unit {len(self._cache)} ({text!r}) encodes to no tokens")
            self._cache.append(ids)
        return self._cache[index]


def cycled(units: Sequence[str]) -> Callable[[int], str]:
    """Unit i of a finite list, repeating the list as often as needed (RULER repeats its essays the same way)."""
    if not units:
        raise ValueError("a haystack needs at least one unit")
    return lambda index: units[index % len(units)]


@dataclasses.dataclass(frozen=True)
class BuiltPrompt:
    ids: list[int]
    needle_position: int  # index in `ids` of the needle block's first token
    haystack_tokens: int  # tokens of haystack around the needles
    depth: float  # realised depth: haystack tokens before the needles / all haystack tokens (0 when there are none)


def build_prompt(
    *,
    head: Sequence[int],
    needles: Sequence[Sequence[int]],
    tail: Sequence[int],
    unit_tokens: Callable[[int], list[int]],
    length: int,
    depth: float,
) -> BuiltPrompt:
    """head + haystack[:p] + needles + haystack[p:] + tail, exactly `length` tokens long.

    The haystack is the first H tokens of the concatenated unit tokens (the last unit may be cut), H = length minus
    every other piece; p is the unit boundary (or either end) nearest to depth·H, depth ∈ [0, 1].
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    needle_ids = [token for needle in needles for token in needle]
    fixed = len(head) + len(needle_ids) + len(tail)
    haystack_budget = length - fixed
    if haystack_budget < 0:
        raise ValueError(f"length {length} is too short: the template and needles alone take {fixed} tokens")
    haystack: list[int] = []
    boundaries = [0]
    index = 0
    while len(haystack) < haystack_budget:
        haystack.extend(unit_tokens(index))
        index += 1
        boundaries.append(min(len(haystack), haystack_budget))
    haystack = haystack[:haystack_budget]
    target = depth * haystack_budget
    nearest = bisect.bisect_left(boundaries, target)
    candidates = boundaries[max(0, nearest - 1) : nearest + 1]
    insert_at = min(candidates, key=lambda b: (abs(b - target), b))
    ids = list(head) + haystack[:insert_at] + needle_ids + haystack[insert_at:] + list(tail)
    return BuiltPrompt(
        ids=ids,
        needle_position=len(head) + insert_at,
        haystack_tokens=haystack_budget,
        depth=insert_at / haystack_budget if haystack_budget else 0.0,
    )


def parse_lengths(values: Sequence[str]) -> list[int]:
    """Token counts from flag values: plain integers or with a K / M suffix (powers of two: 4K = 4096)."""
    lengths = []
    for value in values:
        text = str(value).strip()
        scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:].lower(), 1)
        digits = text[:-1] if scale > 1 else text
        if not digits.isdigit() or int(digits) <= 0:
            raise ValueError(f"a length must be a positive integer, optionally with K or M, got {value!r}")
        lengths.append(int(digits) * scale)
    return lengths


def parse_depths(values: Sequence[str]) -> list[float]:
    """Needle depths in percent (0 = start of the haystack, 100 = its end)."""
    depths = []
    for value in values:
        depth = float(value)
        if not 0.0 <= depth <= 100.0:
            raise ValueError(f"a depth is a percentage in [0, 100], got {value!r}")
        depths.append(depth)
    return depths


def require_distinct(name: str, values: Sequence) -> None:
    """A sweep's values (tasks, lengths, depths) must be non-empty and distinct: each is one row or column."""
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--{name} must list distinct values, got {list(values)}")
