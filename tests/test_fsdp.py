"""The fused loss under FSDP2: `torchrun --nproc_per_node=2` (gloo, CPU) runs tests/fsdp_worker.py, where the lm_head
that `kdkit.models.full_lm_head` gathers feeds `fused_distillation_loss` on each rank's half of a batch; loss and every
gradient equal one process on the whole batch."""
import json, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}

@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('fsdp') / 'fsdp.json'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port', str(29700 + os.getpid() % 200),
           str(ROOT / 'tests' / 'fsdp_worker.py'), '--out', str(out)]
    r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f'{cmd} exited {r.returncode}:\n{r.stderr[-4000:]}'
    return json.loads(out.read_text())

@pytest.mark.parametrize('case', ['tied head in the root group', 'own head group with bias', 'accelerate layout',
                                  'own head group, 2 accumulated micro-batches', 'through DistillationTrainer.compute_loss'])
def test_two_ranks_equal_one_process(two_ranks, case):
    r = two_ranks[case]
    assert r['loss'] == pytest.approx(r['ref'], rel=1e-5, abs=1e-6), r
    assert r['max_grad_diff'] < 1e-5 * max(1., r['largest_grad']), r  # every parameter, lm_head included
    assert r['grads_compared'] >= 20, r
    assert r['full_inside'], r  # the loss saw the whole weight, not a DTensor shard

def test_own_head_group_is_resharded(two_ranks):
    assert two_ranks['own head group with bias']['sharded_after']  # gathered only around the loss
