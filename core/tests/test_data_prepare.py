"""``bridgectl data prepare``: what it writes reads back through megatron-core; bad input is one line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("tokenizers")

from _sft_toys import chat, save_tokenizer, write_jsonl

from bridge_core.cli.main import main
from bridge_core.errors import DataError
from bridge_core.training import sft_files
from bridge_core.training.data_prepare import prepare


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return save_tokenizer(tmp_path_factory.mktemp("tok"))


def _read(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return [list(map(int, x)) for x in IndexedDataset(str(prefix), mmap=True)]


def test_pretrain_round_trip_through_megatron_datasets(tok, tmp_path, capsys):
    from transformers import AutoTokenizer

    texts = ["hello world", "a second document", "zzz"]
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    assert (
        main(["data", "prepare", "--tokenizer", str(tok), "--input", str(source), "--output", str(tmp_path / "pt")])
        == 0
    )
    assert "3 examples" in capsys.readouterr().out
    t = AutoTokenizer.from_pretrained(tok)
    want = [t(x).input_ids + [t.eos_token_id] for x in texts]
    assert _read(tmp_path / "pt") == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "pt.bin", "pt.idx"]  # no partial left

    from bridge_core.training.config import TrainingConfig, apply_overrides
    from bridge_core.training.data import build_datasets

    config = apply_overrides(
        TrainingConfig(),
        [
            f"data.paths={tmp_path / 'pt'}",
            "data.kind=pretrain",
            "train.seq_length=8",
            "train.iters=2",
            "train.global_batch_size=2",
            "train.eval_interval=none",
            "data.split=100,0,0",
        ],
    )
    train_ds, _ = build_datasets(config, 272)
    stream = [i for doc in want for i in doc]
    sample = train_ds[0]["tokens"].tolist()
    assert any(stream[k : k + 8] == sample for k in range(len(stream))), sample  # the trainer reads the files


def test_sft_round_trip_masks_exactly_the_answers(tok, tmp_path):
    from transformers import AutoTokenizer

    rows = [
        chat("Who founded Zorblat?", "Quillon."),
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
        {"prompt": "Q: capital of France? A:", "completion": " Paris"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    done = prepare(tok, source, tmp_path / "sft", "sft")
    assert [p.name for p in done.files] == [
        "sft_tokens.bin",
        "sft_tokens.idx",
        "sft_mask.bin",
        "sft_mask.idx",
        "sft.json",
    ]
    t = AutoTokenizer.from_pretrained(tok)
    tokens, masks = _read(sft_files.tokens_prefix(tmp_path / "sft")), _read(sft_files.mask_prefix(tmp_path / "sft"))
    assert (
        tokens[0] == t(t.apply_chat_template(rows[0]["messages"], tokenize=False), add_special_tokens=False).input_ids
    )
    answers = [t.decode([i for i, m in zip(ids, mask) if m]) for ids, mask in zip(tokens, masks)]
    assert answers == ["Quillon.<|im_end|>\n", "2<|im_end|>\n4<|im_end|>\n", " Paris<|im_end|>"]
    assert t.decode(tokens[2]) == "Q: capital of France? A: Paris<|im_end|>"
    manifest = sft_files.read_manifest(tmp_path / "sft")
    assert manifest["examples"] == 3 and manifest["answer_tokens"] == sum(map(sum, masks)) == done.answer_tokens


@pytest.mark.parametrize(
    ("lines", "fmt", "message"),
    [
        (['{"text": "a"}', "", '{"text": "b"}'], "pretrain", r"in.jsonl:2: empty line"),
        (['{"text": "a"}', '{"text": "b"}', "{oops"], "pretrain", r"in.jsonl:3: not valid JSON"),
        (['{"txt": "a"}'], "pretrain", r'in.jsonl:1: expected a non-empty "text" string'),
        (["[1, 2]"], "sft", r"in.jsonl:1: expected a JSON object, got list"),
        (['{"text": "a"}'], "sft", r'in.jsonl:1: expected "messages" .* or "prompt" and "completion"'),
        (
            [json.dumps({"messages": [{"role": "user", "content": "hi"}]})],
            "sft",
            r'in.jsonl:1: no message has role "assistant"',
        ),
        ([json.dumps({"messages": [{"role": "user"}]})], "sft", r"in.jsonl:1: messages\[0\] must be an object"),
        (
            [json.dumps({"prompt": "q", "completion": ""})],
            "sft",
            r'in.jsonl:1: "prompt" must be a string and "completion"',
        ),
        ([], "sft", r"in.jsonl: the file is empty"),
    ],
)
def test_bad_lines_are_one_line_errors_with_the_line_number_and_leave_nothing(tok, tmp_path, lines, fmt, message):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError, match=message) as info:
        prepare(tok, source, tmp_path / "out", fmt)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no partial folder, no lock


def test_a_failed_overwrite_keeps_the_previous_complete_set(tok, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [chat("q", "a")])
    prepare(tok, good, tmp_path / "sft", "sft")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("sft*")}
    with pytest.raises(DataError, match="sft_tokens.bin exists; pass --overwrite"):
        prepare(tok, good, tmp_path / "sft", "sft")
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "b"), "{"])
    with pytest.raises(DataError, match="bad.jsonl:2"):
        prepare(tok, bad, tmp_path / "sft", "sft", overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("sft*")} == before
    assert not list(tmp_path.glob(".*"))


def test_missing_tokenizer_files_and_chat_template_are_named(tok, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [chat("q", "a")])
    empty = tmp_path / "hf"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"--tokenizer .*hf: no tokenizer files in it \(missing all of tokenizer.json"):
        prepare(empty, source, tmp_path / "o", "sft")
    no_template = save_tokenizer(tmp_path / "plain", chat_template=None)
    with pytest.raises(
        DataError, match=r"in.jsonl:1: chat messages need a chat template, and the tokenizer in .*plain"
    ):
        prepare(no_template, source, tmp_path / "o", "sft")
    code = main(["data", "prepare", "--tokenizer", str(tok), "--input", str(tmp_path / "nope.jsonl"), "--output", "x"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("nope.jsonl: no such file (a JSONL file, one example per line)")
