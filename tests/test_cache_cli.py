"""`kdkit cache` and `kdkit inspect` through kdkit.cli.main: real caches, mismatches and damaged files as one-line errors."""
import json
import pytest
import torch

from kdkit.cache import CachedLogitsDataset, read_cache_metadata
import cache_worker as W

torch.set_num_threads(1)

def _run_cli(argv, capsys, err=False):
    "(exit code, stdout) of `kdkit ARGV`; with err=True (exit code, stderr)."
    from kdkit.cli import main
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.err if err else out.out


@pytest.fixture(scope='module')
def hf_teacher(tmp_path_factory):
    "A saved tiny Llama + a trained BPE tokenizer, and a text file: a real `kdkit cache` input."
    from kdkit.data import train_demo_tokenizer, demo_corpus
    d = tmp_path_factory.mktemp('teacher')
    tok = train_demo_tokenizer(demo_corpus(200, seed=0), vocab_size=300)
    t = W.tiny_llama(vocab=len(tok), layers=1)
    t.save_pretrained(d / 'model'); tok.save_pretrained(d / 'model')
    (d / 'corpus.txt').write_text('\n'.join(demo_corpus(60, seed=1)))
    return d


def test_cli_cache_and_inspect(hf_teacher, capsys, tmp_path):
    out = tmp_path / 'cli.h5'
    rc, text = _run_cli(['cache', '--teacher', str(hf_teacher / 'model'), '--data', str(hf_teacher / 'corpus.txt'), '--out', str(out),
                         '--k', '8', '--temperatures', '1', '2', '--seq-len', '32', '--batch-size', '4', '--limit', '6'], capsys)
    assert rc == 0 and out.exists() and 'B/entry' in text
    m = read_cache_metadata(out)
    assert (m['k'], m['seq_len'], m['n_sequences'], m['temperatures']) == (8, 32, 6, [1.0, 2.0])
    from transformers import AutoTokenizer
    CachedLogitsDataset(out).check_compatible(tokenizer=AutoTokenizer.from_pretrained(hf_teacher / 'model'), seq_len=32)
    rc, text = _run_cli(['inspect', str(out), '--tokenizer', str(hf_teacher / 'model'), '--n-tokens', '3'], capsys)
    assert rc == 0 and 'rows 6, tokens 192' in text and 'mean teacher mass covered by the top-8' in text and '->' in text
    rc, text = _run_cli(['inspect', str(out), '--json'], capsys)
    assert json.loads(text)['rows'] == 6
    rc, text = _run_cli(['inspect', str(tmp_path / 'nope.h5')], capsys, err=True)
    assert rc == 2 and 'nope.h5: no such cache file' in text
    # a different cache at --out: one line naming the flag that would replace it, the file untouched
    before = out.read_bytes()
    rc, text = _run_cli(['cache', '--teacher', hf_teacher / 'model', '--data', hf_teacher / 'corpus.txt', '--out', out,
                         '--k', '4', '--seq-len', '32', '--limit', '6'], capsys, err=True)
    last = text.strip().splitlines()[-1]  # (after the model loader's own progress bar)
    assert rc == 2 and last.startswith(f'kdkit cache: --out {out} exists and holds a different cache (k: 8 != 4')
    assert last.endswith('pass --overwrite or another path') and 'Traceback' not in text, text
    assert out.read_bytes() == before
    rc, text = _run_cli(['cache', '--teacher', hf_teacher / 'model', '--data', 'demo', '--out', out, '--k', '301'], capsys, err=True)
    assert rc == 2 and "--k 301: at most the teacher's vocabulary size, 300" in text, text


def test_cli_cache_shards_and_inspect_the_folder(hf_teacher, capsys, tmp_path):
    "--shards leaves a folder of segment files and a manifest; inspect and the reader take the folder."
    out = tmp_path / 'shards'
    rc, text = _run_cli(['cache', '--teacher', hf_teacher / 'model', '--data', hf_teacher / 'corpus.txt', '--out', out, '--k', '8',
                         '--seq-len', '32', '--limit', '6', '--segment-size', '2', '--shards'], capsys)
    assert rc == 0 and out.is_dir() and (out / 'manifest.json').exists() and len(list(out.glob('seg-*.h5'))) == 3
    rc, text = _run_cli(['inspect', out, '--tokenizer', 'ids'], capsys)
    assert rc == 0 and 'rows 6, tokens 192' in text
    assert len(CachedLogitsDataset(out)) == 6
    (tmp_path / 'plain').mkdir()
    rc, text = _run_cli(['cache', '--teacher', hf_teacher / 'model', '--data', 'demo', '--out', tmp_path / 'plain'], capsys, err=True)
    assert rc == 2 and 'is a folder; give a cache file path (.h5), or pass --shards' in text

@pytest.mark.parametrize('damage', ['truncated', 'zeroed chunk', 'not hdf5'])
def test_cli_inspect_of_a_damaged_cache_is_one_line(hf_teacher, capsys, tmp_path, damage):
    out = tmp_path / 'c.h5'
    assert _run_cli(['cache', '--teacher', hf_teacher / 'model', '--data', hf_teacher / 'corpus.txt', '--out', out,
                     '--k', '8', '--seq-len', '32', '--limit', '6'], capsys)[0] == 0
    raw = bytearray(out.read_bytes())
    if damage == 'truncated': raw = raw[:len(raw) // 2]
    elif damage == 'zeroed chunk': raw[len(raw) // 2:len(raw) // 2 + 4096] = bytes(4096)
    else: raw = bytearray(b'not an hdf5 file at all')
    out.write_bytes(bytes(raw))
    rc, text = _run_cli(['inspect', out], capsys, err=True)
    assert rc == 2 and text.count('\n') == 1 and 'c.h5' in text and 'Traceback' not in text, text


def test_cli_help_documents_every_flag(capsys):
    from kdkit.cli import build_parser
    p = build_parser()
    assert 'cache' in p.format_help() and 'inspect' in p.format_help()
    sub = next(a for a in p._actions if a.__class__.__name__ == '_SubParsersAction')
    for name in ('cache', 'inspect'):
        sp = sub.choices[name]
        for a in sp._actions:
            if a.dest not in ('help',): assert a.help, f'kdkit {name}: flag {a.option_strings or a.dest} has no help'
        h = sp.format_help()
        for flag in ('--teacher', '--data', '--out', '--k', '--mode', '--temperatures', '--seq-len', '--batch-size', '--no-resume', '--debug') if name == 'cache' else ('--row', '--tokenizer', '--debug'):
            assert flag in h


def test_cli_cache_hidden_layers(hf_teacher, capsys, tmp_path):
    "--hidden-layers stores those teacher layers; the summary (and `kdkit inspect`) states their size per token; bad ones name the flag."
    out = tmp_path / 'hid.h5'
    base = ['cache', '--teacher', str(hf_teacher / 'model'), '--data', str(hf_teacher / 'corpus.txt'), '--seq-len', '32', '--k', '8', '--limit', '4']
    rc, text = _run_cli(base + ['--out', out, '--hidden-layers', '0,-1'], capsys)
    assert rc == 0 and read_cache_metadata(out)['hidden_layers'] == [0, -1]
    assert 'teacher hidden states of layers [0, -1]' in text and 'B/token stored' in text
    rc, text = _run_cli(['inspect', out], capsys)
    assert rc == 0 and 'teacher hidden states of layers [0, -1]' in text
    rc, err = _run_cli(base + ['--out', tmp_path / 'bad.h5', '--hidden-layers', '4'], capsys, err=True)
    assert rc == 2 and '--hidden-layers 4' in err and '1 decoder layers' in err
