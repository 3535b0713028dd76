"""The papermill recipes: parameters survive nbdev-clean, and tiny runs write what they promise."""
import json
from pathlib import Path
import nbformat, papermill as pm, pytest
from kdkit.recipes import find_recipe, recipe_config, run_recipe

TINY_STAGES = [
    {"name": "bridge", "max_steps": 4, "learning_rate": 3e-3, "alpha": 0.5, "temperature": 1.0, "warmup_steps": 0,
     "lr_rules": [{"pattern": "embed_tokens|lm_head", "lr_multiplier": 0.0, "name": "embeddings"},
                  {"pattern": r"layers\.", "lr_multiplier": 1.0, "name": "layers"}]},
    {"name": "polish", "max_steps": 4, "learning_rate": 1e-3, "alpha": 0.5, "temperature": 1.0, "warmup_steps": 0,
     "lr_rules": [{"pattern": "embed_tokens|lm_head", "lr_multiplier": 0.5, "name": "embeddings"},
                  {"pattern": r"layers\.", "lr_multiplier": 1.0, "name": "layers"}]},
]
TINY = {"n_train_blocks": 16, "n_eval_blocks": 4, "seq_len": 64, "batch_size": 4, "eval_steps": 4, "logging_steps": 1, "k": 16, "stages": TINY_STAGES}

@pytest.mark.parametrize("name", ["r01_distill", "r02_sweep"])
def test_parameters_are_declared(name):
    "papermill sees the `parameters` cell (nbdev-clean must keep its tag), and every parameter is documented."
    params = pm.inspect_notebook(str(find_recipe(name)))
    assert "out_dir" in params
    assert all(p["help"] for p in params.values()), params
    src = nbformat.read(find_recipe(name), as_version=4)
    assert [c for c in src.cells if "parameters" in c.metadata.get("tags", [])]

def test_packaged_recipes_match_nbs():
    root = Path(__file__).resolve().parents[1]
    for p in (root/"nbs"/"recipes").glob("*.ipynb"):
        assert (root/"kdkit"/"recipe_notebooks"/p.name).read_bytes() == p.read_bytes(), f"run tools/sync_recipes.py ({p.name})"

def test_r01_tiny_run(tmp_path):
    out = tmp_path/"r01"
    nb = run_recipe("r01_distill", out, TINY, config=recipe_config("demo"), log_output=False)
    for f in ("metrics.json", "history.jsonl", "history_ce_only.jsonl", "loss.png", "lr_groups.png", "eval_comparison.png", "teacher_cache.h5",
              "student/config.json", "r01_distill.ipynb"):
        assert (out/f).exists(), f
    m = json.loads((out/"metrics.json").read_text())
    assert set(m["results"]) == {"teacher", "student_before", "student_kd", "student_ce_only"}
    assert m["results"]["teacher"]["kl"] < 1e-4 and m["results"]["teacher"]["top1_agreement"] == 1.0
    assert m["results"]["student_before"]["kl"] > m["results"]["teacher"]["kl"]
    # the data behind the plots: both stages, losses at each step, the frozen group flat at 0 in stage 1 only
    history = [json.loads(l) for l in (out/"history.jsonl").read_text().splitlines()]
    from kdkit.plots import plot_losses, plot_lr_groups
    labels = {l.get_label() for ax in plot_losses(history).axes for l in ax.get_lines()}
    assert {"loss", "ce_loss", "kd_loss"} <= labels, labels
    logs = [h for h in history if "lr/embeddings" in h]
    assert {h["stage"] for h in logs} == {"bridge", "polish"}
    assert all(h["lr/embeddings"] == 0 for h in logs if h["stage"] == "bridge")
    assert any(h["lr/embeddings"] > 0 for h in logs if h["stage"] == "polish")
    assert all(h["lr/layers"] > 0 for h in logs)
    lr_lines = {l.get_label(): l for ax in plot_lr_groups(history).axes for l in ax.get_lines()}
    assert any("embeddings" in k for k in lr_lines), list(lr_lines)
    assert any("eval_kd_loss" in h for h in history)
    # the executed notebook shows the plots inline
    executed = nbformat.read(nb, as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3, len(images)
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(out/"student").config.num_hidden_layers == 2

def test_r02_tiny_sweep_shares_one_cache(tmp_path):
    out = tmp_path/"r02"
    small = {k: v for k, v in TINY.items() if k != "eval_steps"}
    run_recipe("r02_sweep", out, {"alphas": [0.5], "temperatures": [1.0, 2.0], "base_config": "demo",
                                  "overrides": {**small, "eval_steps": 0}}, log_output=False)
    s = json.loads((out/"sweep.json").read_text())
    assert [(r["alpha"], r["temperature"]) for r in s["runs"]] == [(0.5, 1.0), (0.5, 2.0)]
    assert (out/"sweep.png").exists() and (out/"sweep.csv").exists()
    assert sorted(p.name for p in out.glob("*.h5")) == ["teacher_cache.h5", "teacher_cache_heldout.h5"]
    assert not list(out.glob("alpha*/*.h5"))  # no run built a cache of its own
    from kdkit.cache import read_cache_metadata
    assert read_cache_metadata(out/"teacher_cache.h5")["temperatures"] == [1.0, 2.0]
