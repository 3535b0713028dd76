"""CachedLogitsDataset: shards as one dataset, DataLoader workers, collate, the Trainer, compatibility checks, inspection."""
import numpy as np
import pytest
import torch
import h5py

from kdkit.cache import CachedLogitsDataset, CacheError, collate_teacher_batch
from kdkit.losses import distillation_loss
import cache_worker as W

torch.set_num_threads(1)

def test_shards_read_as_one_dataset(tmp_path, ref):
    "Two caches of the two halves of the data, read as a list, equal the cache of the whole."
    data = W.toy_blocks()
    half = {k: v[:20] for k, v in data.items()}, {k: v[20:] for k, v in data.items()}
    a = W.make_generator().generate(half[0], tmp_path / 'a.h5')
    b = W.make_generator().generate(half[1], tmp_path / 'b.h5')
    one, two = CachedLogitsDataset(ref), CachedLogitsDataset([a, b])
    assert len(two) == len(one) == W.N
    idx = [39, 0, 21, 19, 20, 5]
    x, y = one.read(idx), two.read(idx)
    for k in x: assert torch.equal(x[k], y[k]), k


def test_dataloader_two_workers(ref):
    ds = CachedLogitsDataset(ref)
    ds[0]  # a handle opened in the parent must not leak into the workers
    dl = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=True, num_workers=2, collate_fn=ds.collate,
                                     generator=torch.Generator().manual_seed(0))
    seen = []
    for b in dl:
        assert b['teacher_temperatures'].shape == (2,) and b['teacher_ids'].shape[1:] == (W.S, 16)
        seen.append(b)
    allb = {k: torch.cat([b[k] for b in seen]) for k in seen[0] if k != 'teacher_temperatures'}
    assert allb['input_ids'].shape[0] == W.N
    # every row equals a direct read of the same row (rows are identified by their tokens)
    full = ds.read(np.arange(W.N))
    pos = {tuple(r.tolist()): i for i, r in enumerate(full['input_ids'])}
    for j, r in enumerate(allb['input_ids']):
        i = pos[tuple(r.tolist())]
        for k in allb: assert torch.equal(allb[k][j], full[k][i]), k


def test_collate_keeps_one_temperature_vector(ref):
    ds = CachedLogitsDataset(ref, temperatures=[2.0])
    b = collate_teacher_batch([ds[3], ds[1]])
    assert b['teacher_temperatures'].tolist() == [2.0] and b['teacher_lse'].shape == (2, W.S, 1)
    assert torch.equal(b['teacher_lse'][0, :, 0], CachedLogitsDataset(ref)[3]['teacher_lse'][:, 1])
    it = ds[0]; it['teacher_temperatures'] = torch.tensor([1.0])
    with pytest.raises(CacheError, match='different teacher_temperatures'): collate_teacher_batch([ds[1], it])


def test_trainer_sees_teacher_fields_with_the_collator(ref, tmp_path):
    "With data_collator=collate_teacher_batch and remove_unused_columns=False the teacher fields reach compute_loss; with the default they are dropped."
    from transformers import Trainer, TrainingArguments
    ds = CachedLogitsDataset(ref)
    seen = {}
    class T(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.setdefault(self.args.remove_unused_columns, set(inputs))
            targets = {k: v for k, v in inputs.items() if k.startswith('teacher_')}
            logits = model(input_ids=inputs['input_ids'], attention_mask=inputs['attention_mask']).logits
            if not targets: return logits.sum() * 0
            return distillation_loss(logits, inputs['labels'], targets, num_items_in_batch=num_items_in_batch).loss
    for remove in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path / str(remove)), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                                 report_to=[], remove_unused_columns=remove, save_strategy='no', logging_strategy='no')
        T(model=W.tiny_llama(), args=args, train_dataset=ds, data_collator=collate_teacher_batch).train()
    assert {'teacher_ids', 'teacher_logprobs', 'teacher_tail_logprob', 'teacher_lse', 'teacher_temperatures'} <= seen[False]
    assert not any(k.startswith('teacher_') for k in seen[True])  # what remove_unused_columns=True does


def test_bad_compatibility(ref):
    ds = CachedLogitsDataset(ref)
    with pytest.raises(CacheError, match=r'ref.h5: tokenizer fingerprint differs'): ds.check_compatible(tokenizer=W.ToyTokenizer(301))
    with pytest.raises(CacheError, match=r'ref.h5: the student.s output layer has 200 rows, narrower than .* 300'): ds.check_compatible(model=W.tiny_llama(vocab=200, layers=1))
    with pytest.raises(CacheError, match=r'ref.h5: seq_len 32 differs from the cache.s seq_len 24'): ds.check_compatible(seq_len=32)
    assert ds.check_compatible(tokenizer=W.ToyTokenizer(), model=W.tiny_llama(vocab=320, layers=1), seq_len=W.S)  # a padded student is fine
    with pytest.raises(CacheError, match=r'temperatures \[3.0\] are not in the cache'): CachedLogitsDataset(ref, temperatures=[3.0])


# ---------------------------------------------------------------- flipped bits: an error, never different targets
def _read_all(p):
    ds = CachedLogitsDataset(p)
    try: return ds.read(range(len(ds)))
    finally: ds.close()

@pytest.mark.parametrize('codec', ['gzip', 'lzf', 'zstd', 'none'])
def test_flipped_bits_never_change_targets_silently(tmp_path, codec):
    "Single bit flips anywhere in the file, and in every dataset's chunks: CacheError (file, dataset, row) or the same targets."
    src = W.make_generator(codec=codec).generate(W.toy_blocks(n=6), tmp_path / 'c.h5')
    good, data = _read_all(src), bytearray(src.read_bytes())
    spans = {}
    with h5py.File(src) as f:
        for name in f:
            loc = []
            f[name].id.chunk_iter(lambda info: loc.append((info.byte_offset, info.size)))
            spans[name] = tuple(np.array(v) for v in zip(*loc))
    rng = np.random.default_rng(0)
    offsets = [int(o) for o in rng.integers(0, len(data), 40)]                       # anywhere: metadata, chunks, free space
    for name, (off, size) in spans.items():                                             # and inside chunks of every dataset
        for r in rng.integers(0, len(off), 2): offsets.append(int(off[r] + rng.integers(0, size[r])))
    caught = 0
    for t, o in enumerate(offsets):
        bad = bytearray(data); bad[o] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / f'flip{t}.h5'; p.write_bytes(bad)
        try: got = _read_all(p)
        except CacheError as e:
            caught += 1
            assert str(p) in str(e)
            continue
        finally: p.unlink()
        for k in good: assert torch.equal(good[k], got[k]), f'{codec}: a flip at byte {o} changed {k} without an error'
    assert caught >= len(spans) * 2  # every flip inside a chunk is caught
    # a flip inside a chunk names the dataset and the row
    name = 'codes'
    bad = bytearray(data); off, size = spans[name]; bad[int(off[3] + size[3] // 2)] ^= 4
    (tmp_path / 'one.h5').write_bytes(bad)
    with pytest.raises(CacheError, match=rf"one.h5: dataset '{name}' row 3"): _read_all(tmp_path / 'one.h5')
