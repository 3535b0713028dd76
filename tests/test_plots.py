"""kdkit.plots: the data behind each figure (line x/y values, axis limits, labels, which keys are drawn), stage
shading, saved PNGs, and the LiveDashboard callback run headless, inside a real Trainer, and inside a real Jupyter kernel."""
import json, math
from types import SimpleNamespace
import numpy as np
import pytest, torch
from kdkit import plots
from kdkit.plots import (LiveDashboard, clip_ylim, in_notebook, load_history, lr_coincidences, plot_eval_comparison,
                         plot_group_plan, plot_heldout_results, plot_losses, plot_lr_groups, robust_ylim, save_figures,
                         series, stage_spans, synthetic_log_history)
from tiny import tiny_llama

torch.set_num_threads(1)

def labels(ax): return [l.get_label() for l in ax.lines]

def two_stage_restarting():
    "Two stages whose Trainer step counter restarts at 1, as when each stage calls `train()` afresh."
    h = []
    for stage, lrs in (('s1', {'lr/emb': 0.0, 'lr/seam': 1e-3, 'lr/rest': 0.0}), ('s2', {'lr/emb': 0.0, 'lr/seam': 5e-4, 'lr/rest': 1e-4})):
        for step in range(1, 6):
            h.append({'loss': 3 - step / 10, 'ce_loss': 4 - step / 10, 'kd_loss': 2 - step / 10, 'stage': stage, **lrs, 'step': step})
        h.append({'eval_loss': 2.5, 'eval_ce_loss': 3.5, 'eval_kd_loss': 1.5, 'eval_top1_agreement': 0.7, 'step': 5})
    h.append({'train_runtime': 1.0, 'train_loss': 2.0, 'step': 5})  # the Trainer's closing summary
    return h

def test_plot_losses_data_and_stages():
    h = synthetic_log_history(steps=(30, 20), stages=('heal_seam', 'heal_all'), eval_every=10)
    fig = plot_losses(h)
    ax, ax1 = fig.axes
    assert labels(ax) == ['loss', 'ce_loss', 'kd_loss', 'eval_loss', 'eval_ce_loss', 'eval_kd_loss']
    kd = ax.lines[2]
    train = [e for e in h if 'kd_loss' in e]
    assert list(kd.get_xdata()) == [e['step'] for e in train]
    np.testing.assert_allclose(kd.get_ydata(), [e['kd_loss'] for e in train])
    assert list(ax.lines[3].get_xdata()) == [10, 20, 30, 40, 50]
    assert labels(ax1) == ['eval_top1_agreement']
    assert [t.get_text() for t in ax.texts] == ['heal_seam', 'heal_all']
    spans = [p.get_x() for p in ax.patches], [p.get_width() for p in ax.patches]
    assert spans == ([0, 30], [30, 20])  # shaded: [0, 30] and [30, 50]

def test_restarting_steps_and_eval_without_stage():
    h = two_stage_restarting()
    assert stage_spans(h) == [('s1', 0, 5), ('s2', 5, 10)]
    ax = plot_losses(h).axes[0]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert list(ax.lines[3].get_xdata()) == [5, 10]  # eval entries inherit the stage before them
    assert 'train_loss' not in labels(ax)

def test_plot_lr_groups_frozen_visible():
    h = two_stage_restarting()
    ax = plot_lr_groups(h).axes[0]
    assert labels(ax) == ['emb', 'seam', 'rest']
    rest = dict(zip(ax.lines[2].get_xdata(), ax.lines[2].get_ydata()))
    assert all(rest[x] == 0.0 for x in range(1, 6)) and all(rest[x] == 1e-4 for x in range(6, 11))
    assert set(ax.lines[0].get_ydata()) == {0.0}
    lo, hi = ax.get_ylim()
    assert lo < 0 < 1e-3 < hi  # zero and the top both inside the frame
    assert [t.get_text() for t in ax.texts] == ['s1', 's2']
    # a plain Trainer history: the Trainer's own learning_rate key
    ax = plot_lr_groups([{'loss': 1.0, 'learning_rate': 2e-3, 'step': 1}, {'loss': 0.9, 'learning_rate': 1e-3, 'step': 2}]).axes[0]
    assert labels(ax) == ['learning_rate'] and list(ax.lines[0].get_ydata()) == [2e-3, 1e-3]

def test_empty_and_bad_history():
    assert plot_losses([]).axes[0].texts[0].get_text() == 'no loss logged yet'
    assert plot_lr_groups([]).axes[0].texts[0].get_text() == 'no learning rate logged yet'
    with pytest.raises(TypeError, match='list of dicts'): plot_losses({'loss': 1})
    with pytest.raises(ValueError, match=r"log_history\[1\] has no numeric 'step'"): plot_losses([{'loss': 1, 'step': 1}, {'loss': 2}])
    ax = plot_losses([{'loss': float('nan'), 'step': 1}, {'loss': 1.0, 'step': 2}]).axes[0]
    assert list(ax.lines[0].get_xdata()) == [2]  # non-finite values are left out, not drawn as gaps at 0

def test_plot_group_plan():
    from kdkit.param_groups import ParameterGroupManager
    m = tiny_llama(vocab=128)
    pgm = ParameterGroupManager([{'name': 'emb', 'pattern': 'embed', 'lr_multiplier': 0},
                                 {'name': 'top', 'pattern': r'layers\.1\.', 'lr_multiplier': 2.5}], default_lr_multiplier=0.1)
    ax = plot_group_plan(pgm, m).axes[0]
    rows = pgm.summary(m).rows
    assert [p.get_width() for p in ax.patches] == [r['parameters'] for r in rows]
    assert [p.get_hatch() for p in ax.patches] == ['//', None, None]
    assert [t.get_text().split('(')[0].strip() for t in ax.texts] == ['frozen', 'lr x2.5', 'lr x0.1']
    assert all(p.requires_grad for p in m.parameters())  # plotting the plan does not apply it

def test_save_figures(tmp_path):
    import matplotlib.image as mpimg
    out = tmp_path / 'run' / 'nested'
    paths = save_figures(synthetic_log_history(), out)
    assert sorted(p.name for p in out.iterdir()) == ['loss.png', 'lr_groups.png']
    for p in paths.values():
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 500 and img.std() > 0.01  # a real picture, not blank

def fake_state(h, step=80, max_steps=80):
    return SimpleNamespace(log_history=h, global_step=step, max_steps=max_steps, is_world_process_zero=True)

def test_dashboard_headless(capsys):
    h = synthetic_log_history()
    assert not in_notebook()
    quiet = LiveDashboard()  # not a kernel: off, silent
    quiet.on_log(None, fake_state(h), None, logs=h[-1]); quiet.on_train_end(None, fake_state(h), None)
    assert (quiet.enabled, quiet.figures, quiet.widget) == (False, {}, None)
    dash = LiveDashboard(enabled=True, min_interval=3600)
    dash.on_log(None, fake_state(h[:10], step=10), None, logs=h[9])
    assert dash.progress.startswith('step 10/80 | stage seam | loss ')
    assert len(dash.figures['loss'].axes[0].lines[0].get_xdata()) == 10
    dash.on_log(None, fake_state(h, step=80), None, logs=h[-1])  # within min_interval: not redrawn
    assert dash.progress.startswith('step 10/80')
    dash.on_train_end(None, fake_state(h, step=80), None)  # the end always redraws
    assert dash.progress.startswith('step 80/80 | stage all')
    assert 'eval_top1_agreement 0.8' in dash.progress
    assert labels(dash.figures['lr_groups'].axes[0]) == ['embeddings', 'seam', 'rest']
    assert dash.widget is None
    assert capsys.readouterr().out == ''  # nothing noisy

def test_dashboard_throttles_slow_drawing(monkeypatch):
    """Drawing that takes 1 s is redrawn no sooner than 9 s later (max_overhead 10%), and always at the end."""
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(plots.time, 'monotonic', lambda: clock.now)
    real = plots.plot_losses
    def slow(h):
        clock.now += 1.0
        return real(h)
    monkeypatch.setattr(plots, 'plot_losses', slow)
    h = synthetic_log_history()
    dash = LiveDashboard(enabled=True, min_interval=2.0, max_overhead=0.1)
    drawn = lambda: dash.progress.split(' | ')[0]
    dash.on_log(None, fake_state(h, step=1), None); assert drawn() == 'step 1/80' and dash.next_draw == 101.0 + 9.0
    clock.now = 109.0; dash.on_log(None, fake_state(h, step=2), None); assert drawn() == 'step 1/80'
    clock.now = 110.0; dash.on_log(None, fake_state(h, step=3), None); assert drawn() == 'step 3/80'
    dash.on_train_end(None, fake_state(h, step=4), None); assert drawn() == 'step 4/80'
    with pytest.raises(ValueError, match='max_overhead'): LiveDashboard(max_overhead=0)

def test_dashboard_widget_path(monkeypatch):
    """With a kernel faked, the dashboard builds its widgets once and writes the progress line into them."""
    import IPython.display
    shown = []
    monkeypatch.setattr(plots, 'in_notebook', lambda: True)
    monkeypatch.setattr(IPython.display, 'display', lambda *a, **k: shown.extend(a))
    monkeypatch.setattr(IPython.display, 'clear_output', lambda *a, **k: None)
    h = synthetic_log_history()
    dash = LiveDashboard(min_interval=0, max_overhead=1.0, widgets=True)
    assert dash.enabled
    dash.on_log(None, fake_state(h[:5], step=5), None); w = dash.widget
    dash.on_log(None, fake_state(h, step=80), None)
    assert dash.widget is w and type(w).__name__ == 'VBox'
    assert '<code>step 80/80 | stage all' in dash._line.value
    assert shown[0] is w and sum(1 for s in shown if s is w) == 1  # the widget is displayed once, figures each time
    assert sum(1 for s in shown if type(s).__name__ == 'Figure') == 4

def test_dashboard_display_path(monkeypatch):
    """By default, in a kernel, the dashboard displays the progress line and two PNGs once, then updates them in place."""
    import IPython.display
    shown, updated = [], []
    class Handle:
        def update(self, x): updated.append(x)
    monkeypatch.setattr(plots, 'in_notebook', lambda: True)
    monkeypatch.setattr(IPython.display, 'display', lambda x, **k: (shown.append((x, k)), Handle())[1])
    h = synthetic_log_history()
    dash = LiveDashboard(min_interval=0, max_overhead=1.0)
    dash.on_log(None, fake_state(h[:5], step=5), None)
    dash.on_log(None, fake_state(h, step=80), None)
    assert [type(x).__name__ for x, _ in shown] == ['HTML', 'Image', 'Image'] and all(k == {'display_id': True} for _, k in shown)
    assert [type(x).__name__ for x in updated] == ['HTML', 'Image', 'Image']
    assert 'step 80/80 | stage all' in updated[0].data and updated[1].data[:4] == b'\x89PNG'
    assert dash.widget is None

def test_dashboard_in_trainer_run(tmp_path):
    """A real (tiny) Trainer run with the dashboard forced on: it sees every logged step."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    m = tiny_llama(vocab=64, layers=1)
    ids = torch.randint(0, 64, (8, 8)).tolist()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, logging_steps=1,
                             use_cpu=True, report_to=[], save_strategy='no', disable_tqdm=True)
    dash = LiveDashboard(enabled=True, min_interval=0)
    Trainer(model=m, args=args, train_dataset=Dataset.from_dict({'input_ids': ids, 'labels': ids}), callbacks=[dash]).train()
    ax = dash.figures['loss'].axes[0]
    assert labels(ax) == ['loss'] and list(ax.lines[0].get_xdata()) == [1, 2, 3, 4]
    assert labels(dash.figures['lr_groups'].axes[0]) == ['learning_rate']
    assert dash.progress.startswith('step 4/4')

def test_dashboard_in_a_real_kernel():
    """Inside a Jupyter kernel (as in Jupyter or papermill) the dashboard turns itself on and shows its plots."""
    nbformat = pytest.importorskip('nbformat'); nbclient = pytest.importorskip('nbclient')
    src = ("from types import SimpleNamespace\nfrom kdkit.plots import LiveDashboard, in_notebook, synthetic_log_history\n"
           "h = synthetic_log_history()\nd = LiveDashboard(min_interval=0)\n"
           "d.on_log(None, SimpleNamespace(log_history=h, global_step=80, max_steps=80, is_world_process_zero=True), None)\n"
           "print(in_notebook(), d.enabled, d.progress[:10])")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbclient.NotebookClient(nb, timeout=120, kernel_name='python3').execute()
    outs = nb.cells[0].outputs
    text = ''.join(o.get('text', '') for o in outs if o.output_type == 'stream')
    assert 'True True step 80/80' in text
    assert sum('image/png' in o.get('data', {}) for o in outs) == 2


def visible(ax): return [l.get_label() for l in ax.lines if not l.get_label().startswith('_')]

def heal(alpha=0.5, **kw):
    "A heal whose held-out CE starts at 13 (as a half-pruned SmolLM2 does) and settles near 2."
    return synthetic_log_history(steps=(30, 30), stages=('bridge', 'polish'), eval_every=10, start_ce=13.0, alpha=alpha, **kw)

def test_plot_eval_comparison_data():
    kd, ce = heal(), heal(alpha=0.0)
    fig = plot_eval_comparison({'KD': kd, 'CE only': ce}, teacher_ce=1.9)
    ce_ax, kl_ax = fig.axes
    assert visible(ce_ax) == ['KD', 'CE only', 'teacher (1.9)'] and visible(kl_ax) == ['KD', 'CE only']
    for ax, key in ((ce_ax, 'eval_ce_loss'), (kl_ax, 'eval_kd_loss')):
        for line, h in zip(ax.lines[:2], (kd, ce)):
            xs, ys = series(h, key)
            assert list(line.get_xdata()) == xs == [0, 10, 20, 30, 40, 50, 60]
            np.testing.assert_allclose(line.get_ydata(), ys)
    teacher = ce_ax.lines[2]
    assert teacher.get_gid() == 'reference' and list(teacher.get_ydata()) == [1.9, 1.9]
    assert ce_ax.get_xlabel() == 'step' and [t.get_text() for t in ce_ax.texts][-2:] == ['bridge', 'polish']
    assert series(ce, 'eval_kd_loss')[1][-1] > series(kd, 'eval_kd_loss')[1][-1]  # the example says what KD is for

def test_plot_eval_comparison_tokens_axis():
    kd = heal()
    ax = plot_eval_comparison({'KD': kd}, x='tokens', tokens_per_step=16 * 128).axes[0]
    assert list(ax.lines[0].get_xdata()) == [s * 2048 for s in series(kd, 'eval_ce_loss')[0]] and ax.get_xlabel() == 'tokens seen'
    seen = [dict(e, num_input_tokens_seen=1000 * e['step']) if 'loss' in e else e for e in kd]  # the Trainer's own count
    ax = plot_eval_comparison({'KD': seen}, x='tokens').axes[1]
    assert list(ax.lines[0].get_xdata()) == [0, 10000, 20000, 30000, 40000, 50000, 60000]
    with pytest.raises(ValueError, match='tokens_per_step'): plot_eval_comparison({'KD': kd}, x='tokens')
    with pytest.raises(ValueError, match="'step' or 'tokens'"): plot_eval_comparison({'KD': kd}, x='epoch')
    with pytest.raises(TypeError, match='dict of run name'): plot_eval_comparison([kd])
    with pytest.raises(ValueError, match='teacher_ce'): plot_eval_comparison({'KD': kd}, teacher_ce='3.2')

def test_first_points_far_above_are_clipped_and_marked():
    h = heal()
    ce_ax = plot_eval_comparison({'KD': h, 'CE only': heal(alpha=0.0)}, teacher_ce=1.9).axes[0]
    lo, hi = ce_ax.get_ylim()
    later = [y for l in ce_ax.lines[:2] for y in l.get_ydata()[1:]]
    assert lo < 1.9 and max(later) < hi < 0.25 * 13  # the later points and the teacher fill the frame
    marks = [l for l in ce_ax.lines if l.get_gid() == 'clipped']
    assert [list(l.get_xdata()) for l in marks] == [[0], [0]] and all(l.get_ydata()[0] == hi for l in marks)
    assert {t.get_text() for t in ce_ax.texts} >= {'13.1', '13.2'}  # the clipped values are written
    full = plot_eval_comparison({'KD': h}, teacher_ce=1.9, clip=False).axes[0]
    assert full.get_ylim()[1] > 13 and not [l for l in full.lines if l.get_gid() == 'clipped']
    ax = plot_losses(h).axes[0]  # the training losses too
    assert ax.get_ylim()[1] < 6 and max(ax.lines[1].get_ydata()) > 9
    # a gentle curve is left alone
    assert robust_ylim(*series(synthetic_log_history(), 'ce_loss')) is None
    assert robust_ylim([0, 1, 2], [13, 4, 3.9], keep=(3.2,)) == pytest.approx((3.2 - 0.08 * 0.8, 4 + 0.3 * 0.8))  # later points 4, 3.9

def test_clip_ylim_on_any_axes():
    from matplotlib.figure import Figure
    ax = Figure().subplots()
    ax.plot([0, 1, 2, 3, 4], [13.0, 4.2, 4.1, 4.0, 4.0])
    ax.plot([0, 1, 2, 3, 4], [12.0, 4.6, 4.4, 4.3, 4.2])
    assert clip_ylim(ax) == 2 and sorted(t.get_text() for t in ax.texts) == ['12', '13']
    assert clip_ylim(ax) == 2  # idempotent: its own markers are not data

def demo_like_history():
    "The demo's groups: embeddings frozen then slow, norms and layers on one schedule, and the old trainer's empty 'default' at 0."
    h = []
    for stage, mult in (('bridge', 0.0), ('polish', 0.3)):
        for step in range(1, 11):
            lr = 1e-3 * (1 - step / 11)
            h.append({'loss': 2 - step / 20, 'stage': stage, 'step': step, 'learning_rate': lr,
                      'lr/embeddings': mult * lr, 'lr/norms': lr, 'lr/layers': lr, 'lr/default': 0.0})
    return h

def test_coinciding_lr_lines_stay_distinguishable():
    h = demo_like_history()
    assert lr_coincidences(h) == {'layers': 'norms'}
    ax = plot_lr_groups(h).axes[0]
    assert labels(ax) == ['embeddings', 'norms', 'layers (= norms)', 'default']
    norms, layers = ax.lines[1], ax.lines[2]
    np.testing.assert_array_equal(norms.get_ydata(), layers.get_ydata())  # drawn at their true values, not offset
    assert (norms.get_linestyle(), norms.get_marker()) == ('-', 'None')
    assert (layers.get_linestyle(), layers.get_marker()) == ('--', 'o')  # dashed with markers over the solid line
    assert ax.lines[3].get_linestyle() != '-'  # default lies on the frozen embeddings in stage 1
    three = [dict(e, **{'lr/heads': e['lr/norms']}) for e in h]
    ax = plot_lr_groups(three).axes[0]
    assert labels(ax)[-1] == 'heads (= norms)' and ax.lines[-1].get_linestyle() == ':'  # a third style for a third line

def test_absent_and_partly_absent_lr_keys():
    """The trainer logs no `lr/<rule>` for a rule without parameters, and a rule may hold parameters in one stage only."""
    h = demo_like_history()
    for e in h:
        del e['lr/default']  # an empty rule: never logged
        if e['stage'] == 'bridge': del e['lr/embeddings']  # not logged in stage 1
    h.append({'eval_loss': 1.0, 'step': 10, 'stage': 'polish'})
    ax = plot_lr_groups(h).axes[0]
    assert labels(ax) == ['norms', 'layers (= norms)', 'embeddings']  # 'default' is not drawn at all
    emb = ax.lines[2]
    drawn = [(x, y) for x, y in zip(emb.get_xdata(), emb.get_ydata()) if math.isfinite(y)]
    assert [x for x, _ in drawn] == list(range(11, 21))  # a gap in stage 1, not a frozen line at 0
    assert all(y > 0 for _, y in drawn)
    assert list(ax.lines[0].get_xdata()) == list(range(1, 21))  # eval entries are not learning-rate points
    ax = plot_lr_groups([{'loss': 1.0, 'step': 1}]).axes[0]  # nothing logged
    assert ax.texts[0].get_text() == 'no learning rate logged yet'

def test_load_history(tmp_path):
    h = synthetic_log_history()
    p = tmp_path / 'history.jsonl'
    p.write_text(''.join(json.dumps(e) + '\n' for e in h) + '\n')
    assert load_history(p) == h
    p.write_text('{"loss": 1, "step": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r'history.jsonl, line 2: not JSON'): load_history(p)
    with pytest.raises(FileNotFoundError, match='no such history file'): load_history(tmp_path / 'missing.jsonl')

def test_plot_heldout_results():
    res = {'teacher': {'ce': 3.22, 'kl': 0.0, 'top1_agreement': 1.0}, 'student_kd': {'ce': 8.36, 'kl': 5.15, 'top1_agreement': 0.134},
           'student_ce_only': {'ce': 8.62, 'kl': 5.43, 'top1_agreement': 0.129}}
    fig = plot_heldout_results(res, names={'student_kd': 'after KD'})
    ce, kl, top1 = fig.axes
    assert [p.get_width() for p in ce.patches] == [3.22, 8.36, 8.62] and [p.get_width() for p in top1.patches] == [1.0, 0.134, 0.129]
    assert [p.get_y() + p.get_height() / 2 for p in kl.patches] == [2, 1, 0]  # first model on top
    assert {t.get_text() for t in ce.get_yticklabels()} == {'teacher', 'after KD', 'student_ce_only'}
    assert [t.get_text() for t in kl.texts] == [' 0', ' 5.15', ' 5.43']
