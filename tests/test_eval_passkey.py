"""eval/passkey.py: exact-match scoring on hand-made outputs, exact-length prompts, and the command end to end."""

import json
import pathlib

import pytest

from data_pipeline.builtin_corpus import BuiltinTokenizer
from eval import common, passkey, scoring


def test_passkey_exact_match_on_hand_made_outputs():
    assert scoring.passkey_match(" 57071. Remember it.", "57071")
    assert scoring.passkey_match("57071", "57071")
    assert scoring.passkey_match(" is 57071 is the pass key", "57071")
    assert not scoring.passkey_match(" 570712", "57071")  # a longer number is not the passkey
    assert not scoring.passkey_match(" 5707", "57071")
    assert not scoring.passkey_match(" 12345 57071", "57071")  # only the first number counts
    assert not scoring.passkey_match(" the pass key", "57071")


def test_prompts_have_the_exact_length_and_hold_the_information_line():
    tokenizer = BuiltinTokenizer()
    args = passkey.PasskeyArgs(lengths=[100], depths=[0, 50, 100], num_samples=2, max_new_tokens=5)
    items = passkey.build_prompts(tokenizer, length=100, args=args)
    assert [len(item["ids"]) for item in items] == [95] * 6
    needle = tokenizer.encode(passkey.INFORMATION_LINE.format(passkey=items[0]["passkey"]))
    for item in items[:3]:
        at = item["needle_position"]
        assert item["ids"][at : at + len(needle)] == needle
    assert items[0]["needle_position"] < items[1]["needle_position"] < items[2]["needle_position"]
    assert items[0]["passkey"] != items[3]["passkey"] and len(items[0]["passkey"]) == 5
    assert items[0]["ids"][0] == tokenizer.eos_id
    with pytest.raises(ValueError, match="too short"):
        passkey.build_prompts(tokenizer, length=40, args=args)


def test_passkey_command_end_to_end(tiny_run_workdir, tmp_path):
    results, path = common.run_command(
        passkey.define_flags,
        passkey.run_from_flags,
        [
            "passkey",
            f"--workdir={tiny_run_workdir}",
            f"--output_dir={tmp_path}",
            "--lengths=80,120",
            "--depths=0,50,100",
            "--num_samples=2",
            "--max_new_tokens=4",
        ],
    )
    record = json.loads(path.read_text())
    assert record["command"] == "passkey" and record["checkpoint_step"] == 2
    assert len(results["samples"]) == 2 * 3 * 2
    # The built-in tokenizer has no digits: the model cannot emit the passkey, and the scorer must say so.
    assert results["accuracy"] == 0.0
    assert record["results"]["grid"]["lengths"] == [80, 120]
    assert pathlib.Path(record["plots"]["heatmap"]).read_bytes()[:4] == b"\x89PNG"
