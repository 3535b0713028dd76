"""The r03 heal recipe: its parameters, a tiny run of every arm on the demo teacher, arms merged across runs, the layer choice."""
import json
from pathlib import Path
import papermill as pm, pytest, torch
from kdkit.recipes import find_recipe, recipe_config, run_recipe

ARMS = ["ce_only", "kd_bucket", "kd_renorm", "kd_pure", "rs_kd", "kd_hidden"]

def test_parameters_are_declared():
    params = pm.inspect_notebook(str(find_recipe("r03_heal")))
    assert {"out_dir", "arms", "drop", "stage1_steps", "stage2_steps", "threads"} <= set(params)
    assert all(p["help"] for p in params.values()), params

def test_tiny_heal_every_arm_then_merge(tmp_path):
    "Every arm runs at tiny size and writes its file; the table and headline come out; a second run of the other arms merges the first's."
    first, out = tmp_path/"first", tmp_path/"r03"
    run_recipe("r03_heal", first, {"arms": ARMS[:4]}, config=recipe_config("heal_tiny"), log_output=False)
    run_recipe("r03_heal", out, {"arms": ARMS[4:], "merge_from": [str(first)]}, config=recipe_config("heal_tiny"), log_output=False)
    for f in ["metrics.json", "heal_ce.png", "layer_distances.png"] + [f"arm_{a}.json" for a in ARMS]:
        assert (out/f).exists(), f
    m = json.loads((out/"metrics.json").read_text())
    assert set(m["results"]) == set(ARMS), m["results"].keys()
    for a, r in m["results"].items():
        assert set(r) == {"step", "ce", "kl", "top1"} and r["kl"] >= 0 and 0 <= r["top1"] <= 1, (a, r)
        assert [p["step"] for p in m["curves"][a]] == [2, 4], m["curves"][a]
    h = m["headline"]
    assert h["tokens_per_arm"] == 4 * 2 * 32 and h["best_kd_arm"] in ARMS[1:]
    assert {"bucket_excess_over_ce_only_excess", "best_kd_tokens_to_ce_only_final_ratio"} <= set(h)
    assert set(m["goals"]) == {"healed_ce_le_1.10x_teacher", "bucket_excess_le_0.6x_ce_only", "best_kd_reaches_ce_only_in_le_half_tokens"}
    assert len(m["origin"]) == 3 and m["hidden_pairs"]  # one of the demo teacher's 4 layers dropped
    o = m["other_heldout"]["stdlib"]  # other text: the arms of both runs, scored on it at their end
    assert set(o["arms"]) == set(ARMS) and o["teacher_ce"] > 0 and o["n_tokens"] > 0 and set(o["pruned"]) == {"ce", "kl", "top1"}
    for a, r in o["arms"].items(): assert r["kl"] >= 0 and 0 <= r["top1"] <= 1, (a, r)
    from bench.bench_heal import merged_metrics
    mm = merged_metrics([first, out])  # the benchmark's merge: `first`'s metrics, every arm of both folders
    assert set(mm["other_heldout"]["stdlib"]["arms"]) == set(ARMS) and mm["other_heldout"]["stdlib"]["arms"] == o["arms"]
    run_recipe("r03_heal", out, {"arms": ARMS[:1]}, config=recipe_config("heal_tiny"), log_output=False)  # again into the same folder
    assert set(json.loads((out/"metrics.json").read_text())["results"]) == set(ARMS)  # the arms it had are kept, not retrained

def _near_identity(model, layers, scale=1e-3):
    "Scale the residual writes (attention and MLP outputs) of `layers` down until they barely change their input."
    with torch.no_grad():
        for i in layers:
            layer = model.model.layers[i]
            layer.self_attn.o_proj.weight.mul_(scale); layer.mlp.down_proj.weight.mul_(scale)
    return model

def test_angular_finds_the_near_identity_block():
    "On a model whose layers 3 and 4 barely change their input, angular:2 drops exactly them and records the origin."
    from kdkit.models import layer_importance, layer_origin, load_student_model, tiny_model
    model = _near_identity(tiny_model(vocab_size=128, layers=6, hidden=64, seed=0), [3, 4])
    g = torch.Generator().manual_seed(0)
    blocks = [{"input_ids": torch.randint(0, 128, (16,), generator=g).tolist()} for _ in range(4)]
    dist = layer_importance(model, blocks, n=2)["angular"]
    assert min(range(len(dist)), key=dist.__getitem__) == 3, dist
    student = load_student_model(model, drop="angular:2", blocks=blocks)
    assert layer_origin(student) == [0, 1, 2, 5]

@pytest.mark.slow
def test_bench_heal_tiny(tmp_path):
    "The benchmark runs the recipe end to end at tiny size and writes its JSON."
    import subprocess, sys, os
    res = tmp_path/"heal.json"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root/"bench"/"bench_heal.py"), "--config", "heal_tiny", "--out", str(tmp_path/"run"), "--results", str(res)],
                   check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    r = json.loads(res.read_text())
    assert set(r["results"]) == set(ARMS) and "goals" in r and r["wall_seconds"] > 0

def test_rerun_with_other_data_rebuilds_the_cache(tmp_path):
    "A teacher cache left by a run on other data is rebuilt, never trained on."
    from kdkit.cache import read_cache_metadata
    out = tmp_path/"r03"
    run_recipe("r03_heal", out, {"arms": ["ce_only"]}, config=recipe_config("heal_tiny"), log_output=False)
    assert read_cache_metadata(out/"teacher_topk.h5")["n_sequences"] == 8
    run_recipe("r03_heal", out, {"arms": ["ce_only"], "n_train_blocks": 6}, config=recipe_config("heal_tiny"), log_output=False)
    assert read_cache_metadata(out/"teacher_topk.h5")["n_sequences"] == 6

def test_variants_pair_each_kd_run_with_its_ce_only_run(tmp_path):
    "bench_heal --variants: a KD arm at another alpha is paired with the CE-only arm of the same other settings, and not with one at another rate."
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.bench_heal import variants
    from bench.report import _changed
    base = {"teacher": "t", "data": "d", "seq_len": 8, "n_eval_blocks": 2, "alpha": 0.5, "learning_rate": 1e-3,
            "stage1_steps": 1, "stage2_steps": 3, "batch_size": 2}
    def run(name, arms, teacher_ce=None, **kw):
        f = tmp_path/name; f.mkdir(); s = {**base, **kw}
        for arm, ce in arms.items(): (f/f"arm_{arm}.json").write_text(json.dumps({"arm": arm, "settings": s, "final": {"ce": ce}}))
        if teacher_ce: (f/"metrics.json").write_text(json.dumps({"params": s, "teacher_ce": teacher_ce}))
        return f
    folders = [run("main", {"ce_only": 4.0, "kd_bucket": 3.5}, teacher_ce=3.0), run("alpha", {"kd_bucket": 3.6}, alpha=0.75),
               run("lr", {"kd_bucket": 3.4}, learning_rate=2e-3)]
    rows = {r["run"]: r for r in variants(folders)}
    assert rows[str(folders[0])]["bucket_excess_over_ce_only_excess"] == pytest.approx(0.5)
    assert rows[str(folders[1])]["ce_only"] == 4.0 and rows[str(folders[1])]["bucket_excess_over_ce_only_excess"] == pytest.approx(0.6)
    assert rows[str(folders[2])]["ce_only"] is None and rows[str(folders[2])]["bucket_excess_over_ce_only_excess"] is None
    assert _changed(rows[str(folders[1])]["settings"], base) == "alpha 0.75" and _changed(base, base) == "none (the run above)"

def test_excess_ratio_is_undefined_once_ce_only_reaches_the_teacher():
    "Below the teacher 'excess CE' stops measuring healing: no ratio when CE-only has no excess, and a KD arm below the teacher is flagged."
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.bench_heal import excess_ratio
    from bench.report import _excess, _goal
    assert excess_ratio(3.5, 4.0, 3.0) == pytest.approx(0.5)
    assert excess_ratio(2.9, 3.0, 3.0) is None and excess_ratio(2.8, 2.9, 3.0) is None
    assert excess_ratio(2.9, 3.1, 3.0) == pytest.approx(-1.0)
    assert _excess(None, 2.9).startswith("undefined") and _excess(-1.0, 3.1) == "-1.00x (KD below the teacher)" and _excess(None, None) == ""
    assert _goal(None) == "undefined" and _goal(True) == "met" and _goal(False) == "not met"

def test_kd_at_another_temperature_caches_its_lse(tmp_path):
    "A KD arm at temperature 2 trains: the top-k cache stores the LSE at T = 1 and at the arms' temperature."
    from kdkit.cache import read_cache_metadata
    out = tmp_path/"r03"
    run_recipe("r03_heal", out, {"arms": ["kd_bucket"], "temperature": 2.0}, config=recipe_config("heal_tiny"), log_output=False)
    assert list(read_cache_metadata(out/"teacher_topk.h5")["temperatures"]) == [1.0, 2.0]
    assert json.loads((out/"arm_kd_bucket.json").read_text())["settings"]["temperature"] == 2.0

@pytest.mark.parametrize("other, message", [(["demo"], "is the transfer set"), (["nowhere/missing.txt"], "missing.txt"), ([3], "source name or path")])
def test_bad_other_heldout_is_refused(tmp_path, other, message):
    "Other held-out text that is the transfer set itself, a missing file or not a name is refused before any training, naming it."
    with pytest.raises(Exception, match=message):
        run_recipe("r03_heal", tmp_path/"r03", {"arms": ["ce_only"], "other_heldout": other}, config=recipe_config("heal_tiny"), log_output=False)
    assert not list((tmp_path/"r03").glob("arm_*.json"))
