"""eval/niah.py and its parts: RULER scoring on hand-made outputs, task semantics, exact-length prompts, end to end."""

import json
import pathlib
import re

import numpy as np
import pytest

from configs import smoke_transformer
from data_pipeline.builtin_corpus import BuiltinTokenizer
from eval import common, haystack, niah, ruler, scoring

# ---------------------------------------------------------------- scoring on hand-made outputs


def test_single_needle_is_exact_match_of_the_value():
    assert scoring.string_match_all(" 4821093.", ["4821093"]) == 1.0
    assert scoring.string_match_all("The number is 4821093 and more", ["4821093"]) == 1.0
    assert scoring.string_match_all(" 4821039.", ["4821093"]) == 0.0
    assert scoring.string_match_all("482109", ["4821093"]) == 0.0
    assert scoring.string_match_all("", ["4821093"]) == 0.0


def test_uuid_match_ignores_case_and_control_characters():
    value = "9f1c2e3a-58b4-4c2d-9e0f-1a2b3c4d5e6f"
    assert scoring.string_match_all("\t" + value.upper() + "\x00", [value]) == 1.0
    assert scoring.postprocess_prediction("  a\x01b\n ") == "a\nb"


def test_multi_value_and_multi_query_score_the_fraction_recalled():
    answers = ["1111111", "2222222", "3333333", "4444444"]
    assert scoring.string_match_all("1111111, 2222222, 3333333 and 4444444", answers) == 1.0
    assert scoring.string_match_all("3333333, 1111111", answers) == 0.5
    assert scoring.string_match_all("4444444 4444444 4444444", answers) == 0.25
    assert scoring.string_match_all("none of them", answers) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        scoring.string_match_all("x", [])


def test_generation_stops_at_eos_and_cells_average():
    assert scoring.continuation_until_eos([5, 6, 1, 7], eos_id=1) == [5, 6]
    assert scoring.continuation_until_eos([5, 6], eos_id=1) == [5, 6]
    # A model vocabulary padded beyond the tokenizer's: unknown ids decode as <unk>, eos ends the answer.
    assert scoring.decode_generated(BuiltinTokenizer(), [3, 190, 4, 1, 3]) == "the <unk> a"
    records = [
        {"depth": 0, "length": 64, "score": 1.0},
        {"depth": 0, "length": 64, "score": 0.0},
        {"depth": 50, "length": 64, "score": 0.25},
        {"depth": 0, "length": 128, "score": 1.0},
    ]
    rows, columns, means = scoring.cell_means(records, "depth", "length")
    assert (rows, columns) == ([0, 50], [64, 128])
    assert means == [[0.5, 1.0], [0.25, None]]
    assert scoring.mean_by(records, "length") == {64: pytest.approx(1.25 / 3), 128: 1.0}


# ---------------------------------------------------------------- RULER task semantics


def test_tasks_follow_ruler_definitions():
    tasks = ruler.TASKS
    assert (tasks["niah_single_1"].haystack, tasks["niah_single_1"].value_kind) == ("repeat", "numbers")
    assert (tasks["niah_single_3"].haystack, tasks["niah_single_3"].value_kind) == ("essay", "uuids")
    assert (tasks["niah_multikey_3"].haystack, tasks["niah_multikey_3"].key_kind) == ("needle", "uuids")
    rng = np.random.default_rng(0)
    mk = ruler.draw_sample(tasks["niah_multikey_1"], rng)
    assert len(mk.needles) == 4 and len(set(mk.keys)) == 4 and len(mk.queries) == 1 and len(mk.answers) == 1
    assert f"One of the special magic numbers for {mk.queries[0]} is: {mk.answers[0]}." in mk.needles
    mv = ruler.draw_sample(tasks["niah_multivalue"], rng)
    assert len(mv.needles) == 4 and len(mv.keys) == 1 and len(mv.answers) == 4
    assert all(re.fullmatch(r"\d{7}", value) for value in mv.answers)
    mq = ruler.draw_sample(tasks["niah_multiquery"], rng)
    assert sorted(mq.queries) == sorted(mq.keys) and len(mq.answers) == 4
    tail = ruler.template_tail(tasks["niah_multiquery"], mq.queries)
    assert tail.endswith(f"for {ruler.query_phrase(mq.queries)} mentioned in the provided text are")
    assert ", and " in ruler.query_phrase(mq.queries)
    single = ruler.template_tail(tasks["niah_single_3"], ("quiet-otter",))
    assert single.endswith("The special magic uuid for quiet-otter mentioned in the provided text is")
    assert ruler.template_head(tasks["niah_single_2"]).startswith("A special magic number is hidden")
    three = ruler.draw_sample(tasks["niah_single_3"], rng)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", three.answers[0])


def test_distractor_needles_never_use_a_sample_key():
    task = ruler.TASKS["niah_multikey_2"]
    sample = ruler.draw_sample(task, np.random.default_rng(3))
    unit = ruler.distractor_needles(task, sample, np.random.default_rng(4))
    distractors = [unit(i) for i in range(300)]
    assert all(sample.keys[0] not in sentence for sentence in distractors)
    assert all(sentence.startswith("One of the special magic numbers for ") for sentence in distractors)


# ---------------------------------------------------------------- exact-length prompts


class WordTokenizer:
    """Whitespace tokenizer with an open vocabulary (every new word gets an id), so needle values survive decoding."""

    eos_id, pad_id = 1, 0

    def __init__(self):
        self.ids = {"<pad>": 0, "<eos>": 1}
        self.words = ["<pad>", "<eos>"]

    @property
    def vocab_size(self):
        return len(self.words)

    def encode(self, text):
        out = []
        for word in text.split():
            if word not in self.ids:
                self.ids[word] = len(self.words)
                self.words.append(word)
            out.append(self.ids[word])
        return out

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids if i not in (0, 1))


def test_build_prompt_hits_the_length_and_the_depth():
    tok = WordTokenizer()
    units = haystack.UnitTokens(tok.encode, haystack.generated_essay(0))
    head, tail, needle = tok.encode("head words here"), tok.encode("tail ?"), tok.encode("the needle is 7.")
    for length in (20, 57, 200):
        for depth in (0.0, 0.5, 1.0):
            built = haystack.build_prompt(
                head=head, needles=[needle], tail=tail, unit_tokens=units, length=length, depth=depth
            )
            assert len(built.ids) == length
            assert built.ids[built.needle_position : built.needle_position + len(needle)] == needle
            assert built.ids[:3] == head and built.ids[-2:] == tail
            assert abs(built.depth - depth) <= 0.5  # nearest sentence boundary
    deep = haystack.build_prompt(head=head, needles=[needle], tail=tail, unit_tokens=units, length=200, depth=1.0)
    assert deep.needle_position == 200 - len(tail) - len(needle)
    shallow = haystack.build_prompt(head=head, needles=[needle], tail=tail, unit_tokens=units, length=200, depth=0.0)
    assert shallow.needle_position == len(head)
    middle = haystack.build_prompt(head=head, needles=[needle], tail=tail, unit_tokens=units, length=400, depth=0.5)
    boundaries = np.cumsum([len(units(i)) for i in range(60)])
    assert middle.needle_position - len(head) in set(boundaries.tolist())  # inserted between sentences
    assert abs(middle.depth - 0.5) < 0.05
    with pytest.raises(ValueError, match="too short"):
        haystack.build_prompt(head=head, needles=[needle], tail=tail, unit_tokens=units, length=8, depth=0.5)


def test_haystack_sources():
    essay = haystack.generated_essay(5)
    sentences = [essay(i) for i in range(50)]
    assert sentences == [haystack.generated_essay(5)(i) for i in range(50)]  # deterministic
    assert len(set(sentences)) > 40 and not any(ch.isdigit() for s in sentences for ch in s)
    assert haystack.split_sentences("One two. Three?  Four!\nFive") == ["One two.", "Three?", "Four!", "Five"]
    cycle = haystack.cycled(["a.", "b."])
    assert [cycle(i) for i in range(5)] == ["a.", "b.", "a.", "b.", "a."]
    assert haystack.parse_lengths(["1K", "96", "2k"]) == [1024, 96, 2048]
    with pytest.raises(ValueError, match="positive integer"):
        haystack.parse_lengths(["4x"])
    with pytest.raises(ValueError, match="percentage"):
        haystack.parse_depths(["120"])
    with pytest.raises(ValueError, match="--depths must list distinct values"):
        niah.NiahArgs(tasks=["niah_single_1"], lengths=[64], depths=[0.0, 0.0])
    with pytest.raises(ValueError, match="unknown NIAH task"):
        niah.NiahArgs(tasks=["niah_single_9"], lengths=[64], depths=[0.0])


# ---------------------------------------------------------------- the pipeline with an oracle in place of a model


def _oracle_run():
    return common.Run(
        name="oracle", config=smoke_transformer.get_config(), model=None, tokenizer=WordTokenizer(), step=None, config_hash="h"
    )


def test_an_oracle_reading_the_prompt_scores_one_and_a_distractor_reader_scores_zero(tmp_path, monkeypatch):
    run = _oracle_run()
    tok = run.tokenizer

    def read_needles(prompt_text, query_keys):
        return [value for key in query_keys for value in re.findall(rf"for {re.escape(key)} is: (\S+)\.", prompt_text)]

    def oracle(run_, prompts, max_new_tokens, *, batch_size, segment_len, distractor=False):
        outputs = []
        for ids in prompts:
            text = tok.decode(ids)
            query = re.search(r"What (?:is|are all) the special magic \w+ for (.+?) mentioned", text).group(1)
            keys = [k for k in re.split(r",? and |, ", query) if k]
            if distractor:  # answers with the value of some other key
                others = [v for k, v in re.findall(r"for (\S+) is: (\S+)\.", text) if k not in keys]
                values = others[:1] or ["0"]
            else:
                values = read_needles(text, keys)
            outputs.append((tok.encode(" ".join(values)) + [tok.eos_id] + [5] * max_new_tokens)[:max_new_tokens])
        return outputs

    monkeypatch.setattr(common, "greedy_generate", oracle)
    args = niah.NiahArgs(
        tasks=list(ruler.TASKS), lengths=[180, 240], depths=[0, 50, 100], num_samples=2, max_new_tokens=12
    )
    results, path = niah.run_niah(run, args, output_dir=str(tmp_path))
    for name, summary in results["tasks"].items():
        assert summary["score"] == 1.0, name
        assert len(summary["samples"]) == 2 * 3 * 2
    assert results["average"] == 1.0
    record = json.loads(path.read_text())
    assert record["results"]["tasks"]["niah_multiquery"]["grid"]["scores"] == [[1.0, 1.0]] * 3
    assert all(pathlib.Path(p).is_file() for p in record["plots"].values())

    monkeypatch.setattr(common, "greedy_generate", lambda *a, **k: oracle(*a, **k, distractor=True))
    args = niah.NiahArgs(
        tasks=["niah_multikey_1", "niah_multikey_2"], lengths=[200], depths=[50], num_samples=3, max_new_tokens=12
    )
    results, _ = niah.run_niah(run, args, output_dir=str(tmp_path))
    assert results["tasks"]["niah_multikey_1"]["score"] == 0.0
    assert results["tasks"]["niah_multikey_2"]["score"] == 0.0


def test_sample_needles_are_the_same_in_every_cell():
    run = _oracle_run()
    hay = niah.Haystacks(run.tokenizer, seed=0, essay_sentences=None)
    args = niah.NiahArgs(tasks=["niah_multikey_2"], lengths=[150], depths=[0, 100], num_samples=2, max_new_tokens=4)
    task = ruler.TASKS["niah_multikey_2"]
    short = niah.build_cell_prompts(task, hay, length=150, depths=[0, 100], args=args)
    long = niah.build_cell_prompts(task, hay, length=300, depths=[0, 100], args=args)
    assert [i["answers"] for i in short] == [i["answers"] for i in long]
    assert short[0]["answers"] != short[2]["answers"]  # samples differ
    assert all(len(i["ids"]) == 146 for i in short) and all(len(i["ids"]) == 296 for i in long)
    # The distractor haystack at 150 tokens is a prefix of the one at 300 (depth 100%: needle after the haystack).
    end_short, end_long = short[1]["needle_position"], long[1]["needle_position"]
    assert short[1]["ids"][:end_short] == long[1]["ids"][:end_short] and end_long > end_short


def test_haystack_file_replaces_the_essay(tmp_path):
    text_file = tmp_path / "hay.txt"
    text_file.write_text("Alpha beta gamma. Delta epsilon zeta!\n\nEta theta iota?")
    tok = WordTokenizer()
    hay = niah.Haystacks(tok, seed=0, essay_sentences=haystack.file_sentences(text_file))
    args = niah.NiahArgs(tasks=["niah_single_2"], lengths=[120], depths=[50], num_samples=1, max_new_tokens=4)
    (item,) = niah.build_cell_prompts(ruler.TASKS["niah_single_2"], hay, length=120, depths=[50], args=args)
    text = tok.decode(item["ids"])
    assert "Alpha beta gamma. Delta epsilon zeta! Eta theta iota? Alpha beta" in text
    with pytest.raises(FileNotFoundError):
        haystack.file_sentences(tmp_path / "missing.txt")


# ---------------------------------------------------------------- a real (tiny, 2-step) model, end to end


def test_streamed_prefill_generates_what_one_pass_generates(tiny_run):
    prompts = np.random.default_rng(0).integers(3, 150, size=(2, 25)).tolist()
    whole = common.greedy_generate(tiny_run, prompts, 6)
    streamed = common.greedy_generate(tiny_run, prompts, 6, segment_len=8)
    assert streamed == whole


def test_niah_command_end_to_end(tiny_run_workdir, tmp_path):
    results, path = common.run_command(
        niah.define_flags,
        niah.run_from_flags,
        [
            "niah",
            f"--workdir={tiny_run_workdir}",
            f"--output_dir={tmp_path}",
            "--lengths=150,200",
            "--depths=0,100",
            "--num_samples=1",
            "--max_new_tokens=6",
        ],
    )
    record = json.loads(path.read_text())
    assert path.parent == tmp_path / pathlib.Path(tiny_run_workdir).name
    assert record["checkpoint_step"] == 2 and record["config_hash"] and record["code_version"]
    assert record["args"]["lengths"] == [150, 200] and record["args"]["workdir"] == tiny_run_workdir
    assert set(record["results"]["tasks"]) == set(ruler.TASKS)
    for summary in results["tasks"].values():
        assert len(summary["samples"]) == 4
        assert all(0.0 <= s["score"] <= 1.0 for s in summary["samples"])
        assert summary["grid"]["lengths"] == [150, 200] and summary["grid"]["depths"] == [0, 100]
    assert len(record["plots"]) == len(ruler.TASKS)
    for png in record["plots"].values():
        assert pathlib.Path(png).read_bytes()[:4] == b"\x89PNG"
