"""A two-stage distillation run for tests/test_trainer_runs.py: started with python (one process) or torchrun (DDP on
CPU, gloo), optionally SIGKILLing itself at a global step. Writes history and final weights under --out."""
import argparse, json, os, signal, sys
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from transformers import TrainerCallback
from kdkit.cache import CachedLogitsDataset
from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments, run_stages
from kdkit.models import tiny_model
from tiny import tiny_llama

p = argparse.ArgumentParser()
p.add_argument('--cache', required=True)
p.add_argument('--out', required=True)
p.add_argument('--batch', type=int, default=4, help='per-device batch size')
p.add_argument('--accum', type=int, default=1)
p.add_argument('--chunk', type=int, default=0, help='loss_chunk_size (0: unfused)')
p.add_argument('--steps', default='3,3', help='steps of stage 1 and stage 2')
p.add_argument('--save_steps', type=int, default=2)
p.add_argument('--hidden', type=float, default=0.0, help='hidden_weight; >0 also gives the cache teacher_hidden of the teacher (tiny_llama seed 0)')
p.add_argument('--narrow', action='store_true', help='a student of width 32 with hidden_projection=True')
p.add_argument('--kill_at', type=int, default=0, help='SIGKILL this process at the end of this global step')
a = p.parse_args()
torch.set_num_threads(1)

class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if a.kill_at and state.global_step == a.kill_at: os.kill(os.getpid(), signal.SIGKILL)

class HiddenCache(torch.utils.data.Dataset):
    "The cache's items plus teacher_hidden [L,S,H] of teacher layers [0, 1] (what a cache written with hidden states yields)."
    def __init__(self, cache, teacher):
        from kdkit.hidden import layer_outputs
        self.cache, self.metadata, self.paths, self.hidden_layers = cache, cache.metadata, cache.paths, [0, 1]
        ids = torch.stack([cache[i]['input_ids'] for i in range(len(cache))])
        with torch.no_grad(), layer_outputs(teacher, self.hidden_layers) as got: teacher(input_ids=ids)
        self.th = torch.stack([got[t] for t in self.hidden_layers], 1)
    def __len__(self): return len(self.cache)
    def __getitem__(self, i): return {**self.cache[i], 'teacher_hidden': self.th[i]}

cache = CachedLogitsDataset(a.cache)
V = cache.metadata['vocab_size']
student = tiny_model(V, layers=2, hidden=32, seed=1) if a.narrow else tiny_llama(V, 2, seed=1)
hidden = dict(hidden_weight=a.hidden, hidden_layers=[[0, 0], [1, 1]], hidden_loss='mse', hidden_projection=a.narrow) if a.hidden else {}
if a.hidden: cache = HiddenCache(cache, tiny_llama(V, 2, seed=0))
args = DistillationTrainingArguments(
    output_dir=a.out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=a.accum, learning_rate=2e-3,
    logging_steps=1, save_steps=a.save_steps, report_to=[], use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
    loss_chunk_size=a.chunk or None, alpha=0.6, temperature=1.0, dataloader_num_workers=0, **hidden)
trainer = DistillationTrainer(student, args, train_dataset=cache, callbacks=[Kill()])
s1, s2 = (int(s) for s in a.steps.split(','))
stages = [dict(name='freeze', max_steps=s1, lr_rules=[{'name': 'layer0', 'pattern': r'layers\.0\.', 'lr_multiplier': 0},
                                                      {'name': 'emb', 'pattern': r'embed_tokens', 'lr_multiplier': 0}]),
          dict(name='all', max_steps=s2, learning_rate=1e-3, lr_rules=[{'name': 'emb', 'pattern': r'embed_tokens', 'lr_multiplier': 0.5}])]
history = run_stages(trainer, stages)
rank = int(os.environ.get('RANK', 0))
hid = trainer._hidden_term()
proj = {f'hidden_projections.{k}': v.detach().clone() for k, v in hid.projections.state_dict().items()} if hid and hid.projections else {}
torch.save({**{k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, **proj}, os.path.join(a.out, f'weights-rank{rank}.pt'))
if rank == 0:
    with open(os.path.join(a.out, 'history.json'), 'w') as f: json.dump(history, f)
# Leave without interpreter teardown: gloo threads alive then can abort a finished run (SIGABRT).
import torch.distributed as dist
if dist.is_initialized(): dist.barrier(); dist.destroy_process_group()
sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
