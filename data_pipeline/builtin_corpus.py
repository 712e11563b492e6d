"""The built-in corpus: deterministic, English-like documents with facts stated early and asked about later.

It lets the smoke configuration and the tests train without any data on disk, and it is built so that a model with an
in-context memory can do visibly better than one without: the answer to a question at the end of a document is only
predictable from a fact stated earlier in the same document (DESIGN D9).

Grammar (one document; every word is one token of a closed vocabulary, punctuation is its own token)::

    document   := intro_fact+ (filler | fact)* question+ <eos>
    intro_fact := fact
    fact       := NAME "lives in" CITY "."
                | NAME "likes" THING "."
                | NAME "has a" COLOR ANIMAL "."
    filler     := "the" ADJ NOUN VERB "the" ADJ? NOUN ADVERB? "."
                | "it was a" ADJ "day in" CITY "."
    question   := "where does" NAME "live ? " NAME "lives in" CITY "."
                | "what does" NAME "like ? " NAME "likes" THING "."
                | "what does" NAME "have ? " NAME "has a" COLOR ANIMAL "."

Each document draws 2–4 people (distinct NAMEs) and one random fact of each kind for every person; the facts are stated in a
random order mixed with filler sentences, then every person is asked about one of their facts. Entities are re-drawn for every
document, so the answers (the CITY / THING / COLOR ANIMAL after a question) cannot be memorised into the weights: they must be
read from context. Filler is drawn from a small probabilistic grammar so the unconditional text is learnable too.

Document ``i`` of corpus ``seed`` is a pure function of ``(seed, i)``: random access without generating the documents before it,
which is what grain's map-style sources need.
"""

from __future__ import annotations

import numpy as np

NAMES = (
    "alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy rupert sybil trent victor walter "
    "yvonne zoe arthur bella cedric daphne edgar fiona gideon hazel ingrid jasper kira leon mona nigel opal"
).split()
CITIES = (
    "paris london rome berlin madrid lisbon vienna prague dublin oslo athens cairo lima quito tokyo seoul delhi hanoi "
    "sydney perth boston denver austin chicago toronto havana nairobi accra tunis"
).split()
THINGS = (
    "apples music books tea coffee chess rain snow bread cheese poems maps kites boats clocks candles honey soup "
    "jazz painting gardens trains stars rivers"
).split()
COLORS = "red blue green yellow black white grey brown orange purple pink silver".split()
ANIMALS = "cat dog horse rabbit parrot goat sheep fox owl turtle hamster lizard duck pony mouse frog".split()
ADJECTIVES = "old young small large quiet loud happy tired bright dark warm cold clever busy gentle".split()
NOUNS = "man woman child farmer baker teacher doctor sailor painter driver singer writer king queen".split()
VERBS = "sees helps finds meets calls follows watches greets visits thanks".split()
ADVERBS = "today again slowly quickly later often".split()
FUNCTION_WORDS = "the a it was day in lives likes has where does live what like have . ?".split()

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def _vocabulary() -> tuple[str, ...]:
    words: list[str] = []
    for group in (FUNCTION_WORDS, NAMES, CITIES, THINGS, COLORS, ANIMALS, ADJECTIVES, NOUNS, VERBS, ADVERBS):
        for word in group:
            if word not in words:
                words.append(word)
    return SPECIAL_TOKENS + tuple(words)


VOCABULARY = _vocabulary()


class BuiltinTokenizer:
    """Word-level tokenizer of the built-in corpus: one id per vocabulary word, whitespace-separated text."""

    def __init__(self) -> None:
        self._id_of = {word: i for i, word in enumerate(VOCABULARY)}
        self.vocab_size = len(VOCABULARY)
        self.pad_id = PAD_ID
        self.eos_id = EOS_ID
        self.unk_id = UNK_ID

    def encode(self, text: str) -> list[int]:
        return [self._id_of.get(word, UNK_ID) for word in text.split()]

    def decode(self, ids) -> str:
        words = [VOCABULARY[i] for i in ids if int(i) not in (PAD_ID, EOS_ID)]
        return " ".join(words)


def _pick(rng: np.random.Generator, words: tuple[str, ...] | list[str]) -> str:
    """The same draw as ``rng.choice(words)``, without its per-call array conversion (5x faster, the loader's hot spot)."""
    return words[rng.integers(0, len(words), dtype=np.int64)]


def _fact_sentences(name: str, city: str, thing: str, color: str, animal: str) -> dict[str, str]:
    return {
        "city": f"{name} lives in {city} .",
        "thing": f"{name} likes {thing} .",
        "animal": f"{name} has a {color} {animal} .",
    }


_QUESTIONS = {
    "city": "where does {name} live ?",
    "thing": "what does {name} like ?",
    "animal": "what does {name} have ?",
}


def _filler(rng: np.random.Generator) -> str:
    if rng.random() < 0.2:
        return f"it was a {_pick(rng, ADJECTIVES)} day in {_pick(rng, CITIES)} ."
    words = ["the", _pick(rng, ADJECTIVES), _pick(rng, NOUNS), _pick(rng, VERBS), "the"]
    if rng.random() < 0.5:
        words.append(_pick(rng, ADJECTIVES))
    words.append(_pick(rng, NOUNS))
    if rng.random() < 0.3:
        words.append(_pick(rng, ADVERBS))
    return " ".join(words) + " ."


def generate_document(
    seed: int,
    index: int,
    *,
    max_fillers: int = 2,
    ask_all_facts: bool = False,
    min_people: int = 2,
    max_people: int = 4,
) -> str:
    """Document ``index`` of the corpus with ``seed``, as whitespace-separated words (no <eos>).

    After each fact come 0..max_fillers filler sentences; every person is asked about one of their facts, or about all
    three with ask_all_facts (a denser recall signal for eval.recall). min_people..max_people people per document
    (one person: every answer is the only word of its kind in the facts, so no NAME has to be matched). The defaults
    are the corpus every other config trains on; other values change the documents, not the draws of the defaults.
    """
    rng = np.random.default_rng([seed, index])
    num_people = int(rng.integers(min_people, max_people + 1))
    names = rng.choice(NAMES, size=num_people, replace=False)
    facts: list[str] = []
    questions: list[str] = []
    for name in names:
        sentences = _fact_sentences(
            name, _pick(rng, CITIES), _pick(rng, THINGS), _pick(rng, COLORS), _pick(rng, ANIMALS)
        )
        facts.extend(sentences.values())
        asked = _pick(rng, sorted(sentences))
        for kind in sorted(sentences) if ask_all_facts else [asked]:
            questions.append(_QUESTIONS[kind].format(name=name) + " " + sentences[kind])
    order = rng.permutation(len(facts))
    body: list[str] = []
    for position in order:
        body.append(facts[position])
        for _ in range(int(rng.integers(0, max_fillers + 1))):
            body.append(_filler(rng))
    question_order = rng.permutation(len(questions))
    return " ".join(body + [questions[i] for i in question_order])


# The answer words of the questions, by kind: after "? NAME lives in" a CITY, after "? NAME likes" a THING, after
# "? NAME has a" a COLOR then an ANIMAL. Each is drawn uniformly from its word list, so 1 / len(list) is chance.
ANSWER_KINDS = {"city": CITIES, "thing": THINGS, "colour": COLORS, "animal": ANIMALS}
_ANSWER_OFFSETS = {"lives": (("city", 3),), "likes": (("thing", 2),), "has": (("colour", 3), ("animal", 4))}


def answer_positions(ids) -> list[tuple[int, str]]:
    """(position, kind) of every answer word of the questions in a token-id sequence of the built-in corpus.

    A question ends with "?"; the answer sentence that follows is "NAME lives in CITY .", "NAME likes THING ." or
    "NAME has a COLOR ANIMAL .". Positions index `ids`; an answer cut off by the end of `ids` is not listed.
    """
    vocabulary = VOCABULARY
    question_mark = vocabulary.index("?")
    found = []
    for position, token in enumerate(ids):
        if int(token) != question_mark or position + 2 >= len(ids):
            continue
        verb = vocabulary[int(ids[position + 2])]
        for kind, offset in _ANSWER_OFFSETS.get(verb, ()):
            if position + 1 + offset < len(ids):
                found.append((position + 1 + offset, kind))
    return found


def copied_name_positions(ids) -> list[int]:
    """Position of the NAME that opens every answer sentence ("? NAME ..."): a copy of the question's own NAME."""
    question_mark = VOCABULARY.index("?")
    return [p + 1 for p, token in enumerate(ids[:-1]) if int(token) == question_mark]


class BuiltinCorpus:
    """Map-style view of the built-in corpus: ``corpus[i]`` is document ``i`` as token ids followed by <eos>."""

    def __init__(
        self,
        seed: int,
        num_documents: int,
        *,
        first_index: int = 0,
        max_fillers: int = 2,
        ask_all_facts: bool = False,
        min_people: int = 2,
        max_people: int = 4,
    ) -> None:
        if num_documents <= 0:
            raise ValueError(f"data.builtin.num_documents must be positive, got {num_documents}")
        if max_fillers < 0:
            raise ValueError(f"data.builtin.max_fillers must be ≥ 0, got {max_fillers}")
        if not 1 <= min_people <= max_people <= len(NAMES):
            raise ValueError(
                f"data.builtin.min_people={min_people}, max_people={max_people}: need 1 ≤ min ≤ max ≤ {len(NAMES)}"
            )
        self.seed = seed
        self.shape = {
            "max_fillers": max_fillers, "ask_all_facts": ask_all_facts, "min_people": min_people,
            "max_people": max_people,
        }  # fmt: skip
        self.first_index = first_index
        self.num_documents = num_documents
        self.tokenizer = BuiltinTokenizer()

    def __len__(self) -> int:
        return self.num_documents

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_documents:
            raise IndexError(f"document {index} out of range [0, {self.num_documents})")
        text = generate_document(self.seed, self.first_index + int(index), **self.shape)
        return np.asarray(self.tokenizer.encode(text) + [EOS_ID], dtype=np.int32)
