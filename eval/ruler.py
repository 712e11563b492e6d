"""RULER's needle-in-a-haystack tasks (Hsieh et al. 2024, "RULER: What's the real context size of your long-context
language models?"): task definitions, needles, prompt templates.

Every task hides needles "One of the special magic {values} for {key} is: {value}." in a haystack and asks for the
values of one or more keys. The eight retrieval tasks, with RULER's settings:

| task            | haystack | key   | value   | keys | values/key | queried keys |
|-----------------|----------|-------|---------|------|------------|--------------|
| niah_single_1   | repeat   | words | numbers | 1    | 1          | 1            |  S-NIAH-1 (passkey-like)
| niah_single_2   | essay    | words | numbers | 1    | 1          | 1            |  S-NIAH-2 (vanilla NIAH)
| niah_single_3   | essay    | words | uuids   | 1    | 1          | 1            |  S-NIAH-3
| niah_multikey_1 | essay    | words | numbers | 4    | 1          | 1            |  MK-NIAH-1 (3 distractor needles)
| niah_multikey_2 | needle   | words | numbers | 1    | 1          | 1            |  MK-NIAH-2 (haystack of needles)
| niah_multikey_3 | needle   | uuids | uuids   | 1    | 1          | 1            |  MK-NIAH-3
| niah_multivalue | essay    | words | numbers | 1    | 4          | 1            |  MV-NIAH
| niah_multiquery | essay    | words | numbers | 4    | 1          | 4            |  MQ-NIAH

Keys of kind 'words' are adjective-noun pairs ("quiet-harbour"), numbers have 7 digits, uuids are version-4 UUIDs.
Placement differs from RULER in one way, on purpose: RULER draws each needle's depth at random; here the depth is the
swept variable, so all needles of a sample sit together at that depth (in random order), which is what a depth × length
heatmap needs (the "controllable" RULER variant does the same).
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np

NEEDLE = "One of the special magic {value_kind} for {key} is: {value}."

_KEY_ADJECTIVES = (
    "quiet amber brave calm clever crooked dusty eager faded fierce gentle giddy golden hollow humble icy jolly "
    "lazy lively lonely lucky misty modest narrow noble odd pale plain polite proud quick rapid rough rusty salty "
    "shallow shiny silent silver sleepy slim smooth sober solid sour spare steady sticky stormy sturdy subtle sunny "
    "swift tame tender thorny tidy tiny twisted vast velvet violet warm wary weary wild windy wise witty wooden"
).split()
_KEY_NOUNS = (
    "harbour anchor apron badger basket beacon bison blanket bramble bridge bucket cabin canyon carpet castle cellar "
    "chimney compass copper cottage crayon cricket dagger dolphin engine falcon feather ferry fiddle garden glacier "
    "goblet hammer helmet hollow island jacket kettle ladder lantern lemon magnet marble meadow mirror mitten needle "
    "orchard otter paddle pebble pepper pillow pocket quarry quill rabbit ribbon saddle scarf shovel spider spindle "
    "teapot thimble tractor tulip valley violin wagon walnut whistle willow window"
).split()


@dataclasses.dataclass(frozen=True)
class NiahTask:
    name: str
    haystack: str  # 'repeat' | 'essay' | 'needle'
    key_kind: str  # 'words' | 'numbers' | 'uuids'
    value_kind: str
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1

    def __post_init__(self) -> None:
        if self.haystack not in ("repeat", "essay", "needle"):
            raise ValueError(f"task {self.name}: unknown haystack {self.haystack!r}")
        for kind in (self.key_kind, self.value_kind):
            if kind not in ("words", "numbers", "uuids"):
                raise ValueError(f"task {self.name}: unknown needle kind {kind!r}")
        if not 1 <= self.num_queries <= self.num_keys:
            raise ValueError(f"task {self.name}: needs 1 ≤ num_queries ≤ num_keys")

    @property
    def singular(self) -> bool:
        """One expected value: the template speaks of 'a special magic number' ... 'is'."""
        return self.num_queries * self.num_values == 1


TASKS = {
    task.name: task
    for task in (
        NiahTask("niah_single_1", "repeat", "words", "numbers"),
        NiahTask("niah_single_2", "essay", "words", "numbers"),
        NiahTask("niah_single_3", "essay", "words", "uuids"),
        NiahTask("niah_multikey_1", "essay", "words", "numbers", num_keys=4),
        NiahTask("niah_multikey_2", "needle", "words", "numbers"),
        NiahTask("niah_multikey_3", "needle", "uuids", "uuids"),
        NiahTask("niah_multivalue", "essay", "words", "numbers", num_values=4),
        NiahTask("niah_multiquery", "essay", "words", "numbers", num_keys=4, num_queries=4),
    )
}


def random_needle_value(kind: str, rng: np.random.Generator) -> str:
    if kind == "numbers":
        return str(int(rng.integers(10**6, 10**7)))
    if kind == "words":
        return f"{_KEY_ADJECTIVES[int(rng.integers(len(_KEY_ADJECTIVES)))]}-{_KEY_NOUNS[int(rng.integers(len(_KEY_NOUNS)))]}"
    if kind == "uuids":
        return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))
    raise ValueError(f"unknown needle kind {kind!r}")


def _distinct(kind: str, count: int, rng: np.random.Generator, exclude: set[str]) -> list[str]:
    drawn: list[str] = []
    while len(drawn) < count:
        value = random_needle_value(kind, rng)
        if value not in exclude and value not in drawn:
            drawn.append(value)
    return drawn


@dataclasses.dataclass(frozen=True)
class NiahSample:
    needles: tuple[str, ...]  # needle sentences, in the order they are inserted
    keys: tuple[str, ...]  # every key with a needle
    queries: tuple[str, ...]  # keys asked about
    answers: tuple[str, ...]  # values of the queried keys (what the model must produce)


def draw_sample(task: NiahTask, rng: np.random.Generator) -> NiahSample:
    """Keys, values and needles of one sample (keys distinct, values distinct)."""
    keys = _distinct(task.key_kind, task.num_keys, rng, set())
    values_of = {}
    used: set[str] = set(keys)
    for key in keys:
        values_of[key] = _distinct(task.value_kind, task.num_values, rng, used)
        used.update(values_of[key])
    needles = [
        NEEDLE.format(value_kind=task.value_kind, key=key, value=value) for key in keys for value in values_of[key]
    ]
    order = rng.permutation(len(needles))
    queried = sorted(rng.choice(task.num_keys, size=task.num_queries, replace=False).tolist())
    queries = tuple(keys[i] for i in queried)
    return NiahSample(
        needles=tuple(needles[i] for i in order),
        keys=tuple(keys),
        queries=queries,
        answers=tuple(value for key in queries for value in values_of[key]),
    )


def distractor_needles(task: NiahTask, sample: NiahSample, rng: np.random.Generator):
    """Unit i of a 'needle' haystack: needles of other keys (never a key of the sample), drawn on demand."""
    exclude = set(sample.keys)

    def unit(_: int) -> str:
        (key,) = _distinct(task.key_kind, 1, rng, exclude)
        return NEEDLE.format(value_kind=task.value_kind, key=key, value=random_needle_value(task.value_kind, rng))

    return unit


def query_phrase(queries: tuple[str, ...]) -> str:
    """The queried keys as RULER lists them: 'a', 'a, and b', 'a, b, and c'."""
    return queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]


def template_head(task: NiahTask) -> str:
    """The instruction before the haystack (RULER's template; singular when one value is expected)."""
    if task.singular:
        value = task.value_kind[:-1]
        return (
            f"A special magic {value} is hidden within the following text. Make sure to memorize it. "
            f"I will quiz you about the {value} afterwards.\n"
        )
    return (
        f"Some special magic {task.value_kind} are hidden within the following text. Make sure to memorize it. "
        f"I will quiz you about the {task.value_kind} afterwards.\n"
    )


def template_tail(task: NiahTask, queries: tuple[str, ...]) -> str:
    """The question after the haystack and RULER's answer prefix, which a base model continues."""
    query = query_phrase(queries)
    if task.singular:
        value = task.value_kind[:-1]
        return (
            f"\nWhat is the special magic {value} for {query} mentioned in the provided text? "
            f"The special magic {value} for {query} mentioned in the provided text is"
        )
    return (
        f"\nWhat are all the special magic {task.value_kind} for {query} mentioned in the provided text? "
        f"The special magic {task.value_kind} for {query} mentioned in the provided text are"
    )
