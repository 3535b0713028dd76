"""prepare_dataset beyond the notebook: the Hub-name path, multi-process tokenisation, chat via files."""
import json
import pytest
from datasets import Dataset
import kdkit.data as kd
from kdkit.data import demo_corpus, demo_tokenizer, prepare_dataset

@pytest.fixture(scope="module")
def tok(): return demo_tokenizer()

def test_hub_name_goes_through_load_dataset(tok, monkeypatch):
    "A name that is not a local path is a Hub dataset: load_dataset(name, config, split=split)."
    calls = []
    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return Dataset.from_dict({"text": demo_corpus(20, seed=2)})
    monkeypatch.setattr(kd, "load_dataset", fake_load_dataset)
    ds = prepare_dataset("someorg/tiny-corpus", tok, seq_len=32, name="en", split="validation")
    assert calls == [("someorg/tiny-corpus", "en", "validation")]
    assert len(ds) > 0 and ds.column_names == ["input_ids", "attention_mask", "labels"]

def test_num_proc_gives_the_same_blocks(tok):
    docs = demo_corpus(200, seed=4)
    assert prepare_dataset(docs, tok, 64, num_proc=2)["input_ids"] == prepare_dataset(docs, tok, 64)["input_ids"]

def test_chat_jsonl_file(tok, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Where is the fox?"}, {"role": "assistant", "content": "The fox is in the woods."}]}]
    (tmp_path/"chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = prepare_dataset(tmp_path/"chat.jsonl", tok, seq_len=48)
    r = ds[0]
    learned = tok.decode([t for t, l in zip(r["input_ids"], r["labels"]) if l != -100])
    assert learned == "The fox is in the woods.<|endoftext|>"

def test_folder_with_mixed_or_no_files(tok, tmp_path):
    (tmp_path/"a.txt").write_text("The cow is old.")
    (tmp_path/"b.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="mixed file types"): prepare_dataset(tmp_path, tok, 16)
    empty = tmp_path/"empty"; empty.mkdir()
    with pytest.raises(ValueError, match="no .txt"): prepare_dataset(empty, tok, 16)

def test_held_out_fraction(tok):
    split = prepare_dataset(demo_corpus(300, seed=5), tok, seq_len=64, test_size=0.1)
    n = len(split["train"]) + len(split["test"])
    assert len(split["test"]) == round(0.1 * n)
    with pytest.raises(ValueError, match="test_size"): prepare_dataset(demo_corpus(3, seed=5), tok, 64, test_size=5)


@pytest.mark.parametrize('source, seq_len, match', [
    ([{"text": 5}], 64, "row 0, field 'text'"),
    ([[{"content": "no role"}]], 64, 'field "role"'),
    ([[{"role": "user", "content": "hi"}, {"role": "assistant"}]], 64, 'message 1'),
    (["some text"], 2.5, 'whole number'),
])
def test_bad_rows_and_values_are_named(source, seq_len, match):
    with pytest.raises(ValueError, match=match):
        prepare_dataset(source, demo_tokenizer(), seq_len)


def test_empty_text_file_is_named(tmp_path):
    (tmp_path/'empty.txt').write_text('')
    with pytest.raises(ValueError, match='empty.txt: the file is empty'):
        prepare_dataset(tmp_path/'empty.txt', demo_tokenizer(), 64)
