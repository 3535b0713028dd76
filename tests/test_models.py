"""kdkit.models beyond the notebook: logit transforms the fused path refuses, model specs, drop specs on other
architectures, and held-out metrics on cache items."""
import pytest
import torch
from kdkit.models import (check_plain_lm_head, dropped_layers, evaluate_distillation, layer_origin, load_model,
                          load_student_model, model_lm_head, output_width, tiny_model)

torch.set_num_threads(1)


def test_refuses_other_logit_transforms():
    m = tiny_model(vocab_size=64, hidden=16, tie=False)
    assert model_lm_head(m)[0] is m.lm_head.weight
    for field, v in [('logits_scaling', 8.0), ('lm_head_multiplier', 0.5), ('output_multiplier', 2.0)]:
        setattr(m.config, field, v)
        with pytest.raises(ValueError, match=f'config.{field}'):
            check_plain_lm_head(m)
        setattr(m.config, field, 1.0)
    m.lm_head = torch.nn.Sequential(m.lm_head)
    with pytest.raises(ValueError, match='not a torch.nn.Linear'):
        check_plain_lm_head(m)


def test_granite_logits_scaling_refused():
    from transformers import GraniteConfig, GraniteForCausalLM
    m = GraniteForCausalLM(GraniteConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, logits_scaling=4.0))
    with pytest.raises(ValueError, match='logits_scaling'):
        model_lm_head(m)


@pytest.mark.parametrize('arch', ['llama', 'qwen2', 'gpt2'])
def test_drop_specs_on_every_architecture(arch):
    t = tiny_model(layers=4, arch=arch)
    s = load_student_model(t, drop='every_other')
    assert layer_origin(s) == [0, 2] and s.config.num_hidden_layers == 2
    x = torch.randint(0, 128, (1, 8))
    assert s(x).logits.shape == (1, 8, 128)  # the pruned model still runs
    assert len(list(t.parameters())) > len(list(s.parameters()))


def test_saved_student_loads_from_its_folder_as_a_spec(tmp_path):
    t = tiny_model(layers=4)
    load_student_model(t, drop='last:2').save_pretrained(tmp_path)
    m = load_model(str(tmp_path))
    assert layer_origin(m) == [0, 3] and output_width(m) == 128


def test_drop_spec_errors_name_the_spec():
    with pytest.raises(ValueError, match="'1,x'"): dropped_layers('1,x', 4)
    with pytest.raises(ValueError, match=r'\[0, 4\)'): dropped_layers([7], 4)


def test_evaluate_distillation_on_token_dicts_with_padded_vocabulary():
    t, s = tiny_model(vocab_size=96, seed=0), tiny_model(vocab_size=128, seed=1)  # the student has 32 padding rows
    rows = [{'input_ids': torch.randint(0, 96, (12,)), 'attention_mask': torch.ones(12, dtype=torch.long)} for _ in range(3)]
    r = evaluate_distillation(s, t, rows, batch_size=2)
    assert r['tokens'] == 3 * 11 and r['kl'] > 0 and 0 <= r['top1_agreement'] <= 1
    assert evaluate_distillation(s, None, rows, vocab_size=96)['ce'] == pytest.approx(r['ce'], rel=1e-5)
