"""eval/recall.py: answer positions in the built-in grammar, scoring on oracle predictions, padding invariance, and the
command end to end."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from data_pipeline.builtin_corpus import (
    ANSWER_KINDS,
    EOS_ID,
    NAMES,
    VOCABULARY,
    BuiltinCorpus,
    BuiltinTokenizer,
    answer_positions,
    generate_document,
)
from eval import common, recall


def test_answer_positions_on_a_hand_made_document():
    tokenizer = BuiltinTokenizer()
    text = (
        "bob lives in rome . bob has a red cat . it was a warm day in oslo . "
        "where does bob live ? bob lives in rome . what does bob have ? bob has a red cat ."
    )
    ids = tokenizer.encode(text)
    words = text.split()
    found = [(words[p], kind) for p, kind in answer_positions(ids)]
    # Facts and the filler's "in oslo" are not answers: only words after a question are.
    assert found == [("rome", "city"), ("red", "colour"), ("cat", "animal")]
    # An answer cut off by the end of the sequence is not listed.
    assert answer_positions(ids[: words.index("?") + 4]) == []


def test_every_generated_question_has_its_answers():
    tokenizer = BuiltinTokenizer()
    for index in range(50):
        text = generate_document(7, index)
        ids = tokenizer.encode(text)
        found = answer_positions(ids)
        assert len([k for _, k in found if k != "animal"]) == text.count("?")
        for position, kind in found:
            assert tokenizer.decode([ids[position]]) in ANSWER_KINDS[kind]


def test_scores_of_oracle_and_wrong_predictions():
    documents = BuiltinCorpus(3, 4)
    oracle, wrong = [], []
    for i in range(len(documents)):
        tokens = np.concatenate([[EOS_ID], documents[i]])
        next_tokens = tokens[1:]
        oracle += recall._answer_records(tokens, next_tokens, np.zeros(len(next_tokens)))
        wrong += recall._answer_records(tokens, np.zeros_like(next_tokens), np.full(len(next_tokens), -2.0))
    right, none = recall.summarize(oracle), recall.summarize(wrong)
    assert right["accuracy"] == 1.0 and right["controls"][recall.COPY_CONTROL]["accuracy"] == 1.0
    assert none["accuracy"] == 0.0 and none["mean_logprob"] == -2.0
    assert right["count"] == sum(entry["count"] for entry in right["by_kind"].values()) > 0
    assert right["by_kind"]["colour"]["chance"] == pytest.approx(1 / 12)
    assert right["by_kind"]["colour"]["count"] == right["by_kind"]["animal"]["count"]


def test_padding_and_batching_do_not_change_the_scores(tiny_hope_run_workdir):
    run = common.load_run(tiny_hope_run_workdir)
    documents = BuiltinCorpus(run.config.data.builtin.seed, 3, first_index=run.config.data.builtin.num_documents)
    one = recall.score_documents(run, documents, recall.RecallArgs(num_documents=3, batch_size=1))
    three = recall.score_documents(run, documents, recall.RecallArgs(num_documents=3, batch_size=3))
    assert [r["kind"] for r in one] == [r["kind"] for r in three]
    assert [r["correct"] for r in one] == [r["correct"] for r in three]
    np.testing.assert_allclose([r["logprob"] for r in one], [r["logprob"] for r in three], atol=1e-4)


def test_documents_of_another_source_or_of_the_training_range_are_refused(tiny_run):
    with pytest.raises(ValueError, match="inside the run's training documents"):
        recall.held_out_documents(tiny_run, recall.RecallArgs(first_document=0))
    config = tiny_run.config.copy_and_resolve_references()
    config.data.source = "mixture"
    with pytest.raises(ValueError, match="data.source='mixture'"):
        recall.held_out_documents(dataclasses.replace(tiny_run, config=config), recall.RecallArgs())


def test_recall_command_end_to_end(tiny_run_workdir, tmp_path):
    results, path = common.run_command(
        recall.define_flags,
        recall.run_from_flags,
        ["recall", f"--workdir={tiny_run_workdir}", f"--output_dir={tmp_path}", "--num_documents=6"],
    )
    record = json.loads(path.read_text())
    assert record["command"] == "recall" and record["checkpoint_step"] == 2
    builtin = common.load_run(tiny_run_workdir).config.data.builtin
    assert results["first_document"] == builtin.num_documents  # the held-out range, by default
    documents = BuiltinCorpus(builtin.seed, 6, first_index=builtin.num_documents)
    expected = sum(len(answer_positions(documents[i])) for i in range(6))
    assert results["count"] == expected
    assert 0.0 <= results["accuracy"] <= 1.0
    assert pathlib.Path(record["plots"]["by_kind"]).read_bytes()[:4] == b"\x89PNG"
    assert "all" in recall.format_table(results)


def test_corpus_knobs_densify_the_recall_signal_and_leave_the_default_corpus_alone():
    from configs import base
    from data_pipeline.loader import corpora_for

    default = generate_document(5, 9)
    assert generate_document(5, 9, max_fillers=2, ask_all_facts=False) == default
    assert generate_document(5, 9, min_people=2, max_people=4) == default
    alone = generate_document(5, 9, max_fillers=0, ask_all_facts=True, min_people=1, max_people=1)
    assert len({w for w in alone.split() if w in NAMES}) == 1 and alone.count("?") == 3
    with pytest.raises(ValueError, match="min_people=3, max_people=2"):
        BuiltinCorpus(5, 1, min_people=3, max_people=2)
    dense = generate_document(5, 9, max_fillers=0, ask_all_facts=True)
    people = default.count("?")
    assert dense.count("?") == 3 * people  # every fact is asked about
    assert " the " not in f" {dense} " and "it was" not in dense  # no filler sentence
    config = base.get_config()
    config.data.builtin.max_fillers, config.data.builtin.ask_all_facts = 0, True
    for split in ("train", "validation"):
        (corpus,) = corpora_for(config.data, split)
        text = BuiltinTokenizer().decode(corpus.documents[0])
        assert text.count("?") % 3 == 0 and "it was" not in text


def test_the_fact_swapped_twin_changes_the_facts_only_within_their_kinds():
    tokens = np.concatenate([[EOS_ID], BuiltinCorpus(3, 1, max_fillers=0)[0]])
    twin = recall.fact_swapped_twin(tokens)
    first_question = int(np.flatnonzero(tokens == VOCABULARY.index("?"))[0])
    np.testing.assert_array_equal(twin[first_question:], tokens[first_question:])
    changed = np.flatnonzero(twin != tokens)
    assert changed.size >= 5 and changed.max() < first_question  # a CITY, THING, COLOUR, ANIMAL per person at least
    kind_of = {VOCABULARY.index(w): kind for kind, words in ANSWER_KINDS.items() for w in words}
    assert all(kind_of[int(twin[p])] == kind_of[int(tokens[p])] for p in changed)


def fake_scores(reads_the_facts: bool):
    """next_token_scores of a model that gives an answer log-probability 0 when the word is stated before the first
    question of its row (-5 otherwise), or -1 whatever the facts say."""

    def scores(run, tokens_bt, *, segment_len):
        logprobs = np.full(tokens_bt[:, 1:].shape, -1.0)
        for row, tokens in enumerate(tokens_bt):
            questions = np.flatnonzero(tokens == VOCABULARY.index("?"))
            if not questions.size:  # a padding row of the last batch
                continue
            first_question = int(questions[0])
            for position, _ in answer_positions(tokens):
                stated = tokens[position] in tokens[:first_question]
                logprobs[row, position - 1] = (0.0 if stated else -5.0) if reads_the_facts else -1.0
        return logprobs, tokens_bt[:, 1:], None

    return scores


@pytest.mark.parametrize("reads_the_facts", [True, False])
def test_fact_dependence_is_what_the_facts_change(tiny_run, monkeypatch, reads_the_facts):
    monkeypatch.setattr(common, "next_token_scores", fake_scores(reads_the_facts))
    # One person, no filler: each answer word is stated once, and its twin states another word instead.
    documents = BuiltinCorpus(3, 4, max_fillers=0, min_people=1, max_people=1)
    results = recall.summarize(recall.score_documents(tiny_run, documents, recall.RecallArgs(batch_size=3)))
    assert results["fact_dependence"] == pytest.approx(5.0 if reads_the_facts else 0.0)
