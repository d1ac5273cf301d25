"""Training: the presets and speed switches, the LR schedule, AdamW's parameter groups, gradient
accumulation, train_step, the loop, its metrics log, early stopping, checkpoints (atomic, exact
resume) and their errors, and FastPath (notebook 08's switches) on a CPU."""

import copy
import json
import math
from dataclasses import asdict, replace

import pytest
import torch

import gpt_helpers
from gpt_helpers import (
    PRESETS,
    SPEED_SWITCHES,
    GPT,
    DataLoaderLite,
    FastPath,
    GPTConfig,
    TrainConfig,
    configure_optimizer,
    estimate_loss,
    fused_head_model_loss,
    get_preset,
    get_tf32,
    load_checkpoint,
    lr_schedule,
    model_from_checkpoint,
    model_loss,
    param_groups,
    preset_name,
    read_log,
    recommended_switches,
    restore_checkpoint,
    save_checkpoint,
    set_seed,
    set_tf32,
    train,
    train_step,
)

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them.\n"
)
LOG_KEYS = {"step", "loss", "val_loss", "lr", "grad_norm", "tokens_per_sec", "elapsed"}


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT * 12)  # ~600 tokens: train and val splits hold a few batches each
    return path


def tiny_run(**overrides) -> TrainConfig:
    """A TrainConfig for a 2-layer, 16-wide GPT with GPT-2's vocabulary: a step takes milliseconds."""
    base = dict(model=GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16), batch_size=2, seq_len=16,
                grad_accum_steps=2, max_lr=1e-2, warmup_steps=2, max_steps=8, eval_interval=3, eval_iters=2,
                ckpt_interval=100, val_fraction=0.2)
    return TrainConfig(**(base | overrides))


def run(cfg, text_file, seed=0, **kwargs):
    set_seed(seed)
    model = GPT(cfg.model)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=cfg.val_fraction)
    return model, train(model, cfg, train_loader=loader, **kwargs)


# ----------------------------------------------------------------------------- schedule


def test_lr_schedule_boundaries_of_the_gpu_preset():
    cfg = PRESETS["gpu"]
    max_lr, min_lr = cfg.max_lr, cfg.max_lr * cfg.min_lr_ratio
    assert lr_schedule(0, cfg) == pytest.approx(max_lr / cfg.warmup_steps)  # > 0: step 0 already learns
    assert lr_schedule(0, cfg) > 0
    assert lr_schedule(cfg.warmup_steps - 1, cfg) == pytest.approx(max_lr)  # warmup ends at the peak
    assert lr_schedule(cfg.warmup_steps, cfg) == pytest.approx(max_lr)
    assert lr_schedule(cfg.max_steps, cfg) == pytest.approx(min_lr)
    assert lr_schedule(cfg.max_steps + 1, cfg) == pytest.approx(min_lr)
    assert lr_schedule(10 * cfg.max_steps, cfg) == pytest.approx(min_lr)
    mid = (cfg.warmup_steps + cfg.max_steps) // 2
    assert lr_schedule(mid, cfg) == pytest.approx((max_lr + min_lr) / 2)  # cosine: halfway at the midpoint
    warm = [lr_schedule(s, cfg) for s in range(cfg.warmup_steps)]
    decay = [lr_schedule(s, cfg) for s in range(cfg.warmup_steps, cfg.max_steps + 1)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert min(decay) >= min_lr - 1e-12 and max(warm + decay) <= max_lr + 1e-12


def test_gpu_preset_is_the_original_run_with_the_fast_path():
    cfg = PRESETS["gpu"]
    # TrainConfig() is the original run on the plain path; the gpu preset adds notebook 08's switches,
    # all but the fused head (a compiled model gets Inductor's fused loss instead)
    assert cfg == replace(TrainConfig(), tf32=True, autocast=True, compile=True, fused_adamw=True)
    assert cfg != TrainConfig() and cfg.model == GPTConfig() and not cfg.fused_head
    assert (cfg.max_lr, cfg.weight_decay, cfg.beta1, cfg.beta2) == (6e-4, 0.1, 0.9, 0.95)
    assert (cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio) == (500, 10_000, 0.1)
    assert (cfg.grad_accum_steps, cfg.grad_clip, cfg.target_loss) == (4, 1.0, 0.099)


def test_speed_switches_are_off_by_default_and_in_the_cpu_and_smoke_presets():
    assert SPEED_SWITCHES == ("tf32", "autocast", "compile", "fused_adamw", "fused_head")
    for cfg in (TrainConfig(), PRESETS["cpu"], PRESETS["smoke"], get_preset("smoke")):
        assert not any(getattr(cfg, name) for name in SPEED_SWITCHES)  # the plain path
    assert get_preset("smoke", fused_head=True).fused_head  # a switch is a field like any other


def test_recommended_switches_per_device(monkeypatch):
    # a CPU: only the fused head (compiling there takes minutes for a tie, notebook 08)
    assert recommended_switches("cpu") == {"tf32": False, "autocast": False, "compile": False,
                                           "fused_adamw": False, "fused_head": True}
    # CUDA: everything; compiled, the plain loss (Inductor fuses it) instead of the fused head
    monkeypatch.setattr(gpt_helpers, "can_compile", lambda device: True)
    assert recommended_switches("cuda") == {"tf32": True, "autocast": True, "compile": True,
                                            "fused_adamw": True, "fused_head": False}
    monkeypatch.setattr(gpt_helpers, "can_compile", lambda device: False)  # no Triton: no compile
    assert recommended_switches("cuda:0") == {"tf32": True, "autocast": True, "compile": False,
                                              "fused_adamw": True, "fused_head": True}


def test_preset_choice_and_overrides(monkeypatch):
    monkeypatch.setenv("GPT_PRESET", "smoke")
    assert preset_name() == "smoke" and get_preset() == PRESETS["smoke"]
    assert preset_name("cpu") == "cpu"
    cfg = get_preset("cpu", max_steps=7)
    assert cfg.max_steps == 7 and PRESETS["cpu"].max_steps != 7  # a copy: the preset is untouched
    monkeypatch.setenv("GPT_PRESET", "laptop")
    with pytest.raises(ValueError, match="unknown preset 'laptop'"):
        preset_name()
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        get_preset("smoke", lr=1e-3)


@pytest.mark.parametrize("field, value, message", [
    ("seq_len", 65, "longer than the model's block_size"),
    ("max_steps", 0, "max_steps must be a positive integer"),
    ("batch_size", -2, "batch_size must be a positive integer"),
    ("max_lr", 0.0, "max_lr must be positive"),
    ("grad_clip", 0.0, "grad_clip must be positive"),
    ("adam_eps", 0.0, "adam_eps must be positive"),
    ("val_fraction", 1.0, "val_fraction must be in"),
    ("seed", -2**63 - 1, r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1"),
    ("seed", 2**64, r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1"),
    ("seed", 1.5, "seed must be an integer"),
])
def test_train_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        get_preset("smoke", **{field: value})


# ----------------------------------------------------------------------------- optimizer


def test_weight_decay_only_on_matrices_and_embeddings(tiny_config):
    model = GPT(tiny_config)
    opt = configure_optimizer(model, tiny_run())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.95) and not opt.defaults.get("fused")  # fused_adamw is off
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & kept
    assert decayed | kept == set(names.values())  # every parameter once (the tied matrix too)
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed  # tied: one name
    assert all(n.endswith(".weight") for n in decayed)
    assert all(n.endswith(".bias") or ".ln_" in n or "ln_f" in n for n in kept)
    assert {n for n in names.values() if n.endswith(".bias") or "ln_" in n} == kept


def test_adam_eps_damps_only_the_weights_whose_gradients_are_tiny():
    # Adam moves a weight by about the LR whatever its gradient's size, unless the gradient is
    # near eps: the cpu preset raises eps so that rows of tokens the text never holds stay put
    for eps, tiny_moves in ((1e-8, True), (1e-6, False)):
        w = torch.nn.Parameter(torch.zeros(2, 1))
        model = torch.nn.Module()
        model.w = w
        opt = configure_optimizer(model, tiny_run(adam_eps=eps, weight_decay=0.0))
        assert opt.defaults["eps"] == eps
        w.grad = torch.tensor([[1e-3], [1e-7]])  # a token in the batch, a token never seen
        opt.step()
        lr = opt.param_groups[0]["lr"]
        assert -w[0].item() == pytest.approx(lr, rel=1e-2)  # the normal step, either way
        assert (-w[1].item() > 0.5 * lr) is tiny_moves  # 1e-8: 0.91 of the step; 1e-6: 0.09 of it


def test_param_groups_decay_every_matrix_and_count_the_tied_one_once(tiny_config):
    model = GPT(tiny_config)
    decay, no_decay = param_groups(model, 0.25)
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    tensors = list(model.parameters())  # the tied wte/lm_head matrix is listed once
    L = tiny_config.n_layer  # per block 4 matrices and 8 vectors; wte, wpe; ln_f's 2 vectors
    assert (len(decay["params"]), len(no_decay["params"])) == (4 * L + 2, 8 * L + 2)
    assert [id(p) for p in decay["params"]] == [id(p) for p in tensors if p.dim() >= 2]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in tensors if p.dim() < 2]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p is model.lm_head.weight for p in decay["params"]) == 1  # wte is the same tensor
    counted = sum(p.numel() for p in decay["params"]) + sum(p.numel() for p in no_decay["params"])
    assert counted == model.num_parameters()
    # a frozen tensor is left out: AdamW has nothing to do with it
    model.transformer.wpe.weight.requires_grad_(False)
    assert all(p is not model.transformer.wpe.weight for g in param_groups(model, 0.1) for p in g["params"])


def test_configure_optimizer_uses_param_groups_and_the_fused_adamw_switch(tiny_config):
    model = GPT(tiny_config)
    cfg = tiny_run(weight_decay=0.05, max_lr=3e-3)
    opt = configure_optimizer(model, cfg)
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == \
        [[id(p) for p in g["params"]] for g in param_groups(model, cfg.weight_decay)]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.defaults["lr"] == 3e-3 and opt.defaults["eps"] == 1e-8 and not opt.defaults.get("fused")
    fused = configure_optimizer(model, replace(cfg, fused_adamw=True), "cpu")  # torch has a fused CPU AdamW
    assert fused.defaults["fused"] is True
    assert not configure_optimizer(model, replace(cfg, fused_adamw=True), "mps").defaults.get("fused")


# ----------------------------------------------------------------------------- accumulation


def test_accumulated_gradients_equal_the_big_batch(tiny_config):
    set_seed(0)
    model = GPT(tiny_config)
    x = torch.randint(0, tiny_config.vocab_size, (8, 16))
    y = torch.randint(0, tiny_config.vocab_size, (8, 16))
    model(x, y)[1].backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for xs, ys in zip(x.chunk(4), y.chunk(4)):
        (model(xs, ys)[1] / 4).backward()  # each micro-batch loss / count
    for p, g in zip(model.parameters(), big):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_train_step_with_accumulation_matches_one_big_batch(text_file):
    # 4 micro-batches of 2 rows read the same tokens, in the same rows, as one batch of 8
    _, small = run(tiny_run(batch_size=2, grad_accum_steps=4, max_steps=1, val_fraction=0.0), text_file)
    _, big = run(tiny_run(batch_size=8, grad_accum_steps=1, max_steps=1, val_fraction=0.0), text_file)
    assert small[0]["loss"] == pytest.approx(big[0]["loss"], rel=1e-6)
    assert small[0]["grad_norm"] == pytest.approx(big[0]["grad_norm"], rel=1e-5)


def hand_written_step(model, optimizer, loader, cfg, step):
    """train_step written out: the LR, K micro-batches' cross-entropy / K, clip, AdamW."""
    lr = lr_schedule(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    total = 0.0
    for _ in range(cfg.grad_accum_steps):
        x, y = loader.next_batch()
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        (loss / cfg.grad_accum_steps).backward()
        total += loss.item() / cfg.grad_accum_steps
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return total, norm.item(), lr


def three_copies(cfg, text_file):
    set_seed(0)
    model = GPT(cfg.model)
    models = [model, copy.deepcopy(model), copy.deepcopy(model)]
    optimizers = [configure_optimizer(m, cfg) for m in models]
    loaders = [DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=0.0) for _ in models]
    return models, optimizers, loaders


def test_train_step_equals_a_hand_written_step_with_accumulation(text_file):
    # K = 2; a low grad_clip so that clipping acts; steps 0 and 1 warm up, step 2 decays
    cfg = tiny_run(grad_accum_steps=2, grad_clip=0.5, val_fraction=0.0)
    (ours, theirs, fused), (opt, opt_ref, opt_fused), (loader, loader_ref, loader_fused) = three_copies(cfg, text_file)
    for step in range(3):
        loss, norm, lr = train_step(ours, opt, loader, cfg, step)
        ref_loss, ref_norm, ref_lr = hand_written_step(theirs, opt_ref, loader_ref, cfg, step)
        assert isinstance(loss, float) and isinstance(norm, float)
        assert lr == lr_schedule(step, cfg) == ref_lr and [g["lr"] for g in opt.param_groups] == [lr, lr]
        assert loss == pytest.approx(ref_loss, abs=1e-6) and norm == pytest.approx(ref_norm, abs=1e-6)
        assert norm > cfg.grad_clip  # the clip mattered
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
        # the fused head + loss: the same step up to float rounding
        f_loss, f_norm, f_lr = train_step(fused, opt_fused, loader_fused, cfg, step, loss_fn=fused_head_model_loss)
        assert f_lr == lr and f_loss == pytest.approx(loss, abs=1e-5) and f_norm == pytest.approx(norm, abs=1e-5)
        for (name, p), q in zip(ours.named_parameters(), fused.parameters()):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=name)
    assert loader.position == loader_ref.position == 3 * 2 * cfg.batch_size * cfg.seq_len  # K batches a step


def test_train_step_uses_the_loss_fn_and_autocast_it_is_given(text_file):
    cfg = tiny_run(val_fraction=0.0)
    (model, *_), (opt, *_), (loader, *_) = three_copies(cfg, text_file)
    calls, entered = [], []

    def loss_fn(m, x, y):
        calls.append(tuple(x.shape))
        return model_loss(m, x, y)

    class Context:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    train_step(model, opt, loader, cfg, 0, loss_fn=loss_fn, autocast=Context)
    assert calls == [(cfg.batch_size, cfg.seq_len)] * cfg.grad_accum_steps
    assert len(entered) == cfg.grad_accum_steps


def test_estimate_loss_averages_the_first_batches_every_time(text_file):
    cfg = tiny_run(val_fraction=0.0)
    set_seed(0)
    model = GPT(cfg.model)
    loader = DataLoaderLite(2, 16, path=text_file, val_fraction=0.0)
    with torch.no_grad():
        expected = sum(model(*loader.next_batch())[1].item() for _ in range(3)) / 3
    loader.next_batch()  # wherever the loader is, it starts over
    assert estimate_loss(model, loader, 3) == pytest.approx(expected, abs=1e-6)
    assert estimate_loss(model, loader, 3) == pytest.approx(expected, abs=1e-6)
    assert estimate_loss(model, loader, 3, loss_fn=fused_head_model_loss) == pytest.approx(expected, abs=1e-5)


def test_train_calls_train_step_once_a_step(text_file, monkeypatch):
    calls = []
    real = gpt_helpers.train_step

    def counting(*args, **kwargs):
        calls.append(args[4])  # the step
        return real(*args, **kwargs)

    monkeypatch.setattr(gpt_helpers, "train_step", counting)
    _, history = run(tiny_run(max_steps=3), text_file)
    assert calls == [0, 1, 2] and [r["step"] for r in history] == [0, 1, 2]


def test_train_hands_every_record_to_its_callbacks(text_file):
    seen, also = [], []
    _, history = run(tiny_run(max_steps=4), text_file, callbacks=[seen.append, also.append])
    assert seen == history == also and [r["step"] for r in seen] == [0, 1, 2, 3]


def test_the_fused_loss_trains_as_the_plain_loss(text_file, monkeypatch):
    # train() follows cfg.fused_head (off by default, and in the cpu and smoke presets): same run,
    # up to float rounding
    calls = []
    fused_head_loss = gpt_helpers.fused_head_loss
    monkeypatch.setattr(gpt_helpers, "fused_head_loss", lambda *a, **k: calls.append(1) or fused_head_loss(*a, **k))
    _, fused = run(tiny_run(fused_head=True), text_file)
    n_fused = len(calls)
    _, plain = run(tiny_run(), text_file)
    assert n_fused > 0 and len(calls) == n_fused  # fused_head=True used it, the default did not
    # training steps and evaluations both: 2 micro-batches a step, eval_iters batches per evaluation
    cfg = tiny_run()
    evaluations = sum(r["val_loss"] is not None for r in fused)
    assert n_fused == cfg.max_steps * cfg.grad_accum_steps + evaluations * cfg.eval_iters
    for a, b in zip(fused, plain):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
        assert (a["val_loss"] is None) == (b["val_loss"] is None)
        if a["val_loss"] is not None:
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_train_runs_a_model_that_is_not_a_gpt_on_the_plain_path_only(text_file):
    class Wrapped(torch.nn.Module):  # e.g. a student's own module around the GPT
        def __init__(self, config):
            super().__init__()
            self.gpt = GPT(config)

        def forward(self, idx, targets=None):
            return self.gpt(idx, targets)

    cfg = tiny_run(max_steps=3)
    set_seed(0)
    model = Wrapped(cfg.model)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=cfg.val_fraction)
    history = train(model, cfg, train_loader=loader)  # the plain loss: model(x, y)[1]
    assert [r["step"] for r in history] == [0, 1, 2] and history[0]["val_loss"] is not None
    with pytest.raises(ValueError, match="fused_head=True needs gpt_helpers.GPT .*got Wrapped.*fused_head=False"):
        train(model, replace(cfg, fused_head=True), train_loader=loader)


# ----------------------------------------------------------------------------- the loop and its log


def test_metrics_log_has_one_record_per_step(text_file, tmp_path):
    cfg = tiny_run()
    _, history = run(cfg, text_file, out_dir=tmp_path / "run")
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    assert log == json.loads(json.dumps(history))
    assert [r["step"] for r in log] == list(range(cfg.max_steps))
    for r in log:
        assert set(r) == LOG_KEYS
        assert r["lr"] == pytest.approx(lr_schedule(r["step"], cfg))
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens_per_sec"] > 0
    evaluated = [r["step"] for r in log if r["val_loss"] is not None]
    assert evaluated == [0, 3, 6, 7]  # every eval_interval, and the last step
    assert all(a["elapsed"] <= b["elapsed"] for a, b in zip(log, log[1:]))
    assert log[-1]["loss"] < log[0]["loss"]


def test_early_stop_at_the_target_loss(text_file, tmp_path):
    cfg = tiny_run(max_steps=100, grad_accum_steps=1, max_lr=3e-2, target_loss=5.0, val_fraction=0.0)
    # repeated text is learnt fast: about 10 steps from ~10.8 to 5
    _, history = run(cfg, text_file, out_dir=tmp_path / "run")
    assert len(history) < cfg.max_steps
    assert history[-1]["loss"] <= cfg.target_loss
    assert all(r["loss"] > cfg.target_loss for r in history[:-1])
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == history[-1]["step"]


def test_read_log_drops_the_steps_a_resume_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 10.0 - s} for s in range(6)]
    lines += [{"event": "resume", "from_step": 3}] + [{"step": s, "loss": 1.0 - s / 10} for s in (3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')  # cut by a crash
    log = read_log(path)
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]  # old step 5 was after the checkpoint
    assert [r["loss"] for r in log] == [10.0, 9.0, 8.0, 0.7, 0.6]  # the resumed run's
    path.write_text('{"step": 0, "loss": 1.0}\nnot json\n{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_log(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_log(tmp_path / "missing.jsonl")


def test_diverged_loss_stops_before_saving(text_file, tmp_path):
    cfg = tiny_run()
    set_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=cfg.val_fraction)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(model, cfg, train_loader=loader, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "ckpt.pt").exists()


# ----------------------------------------------------------------------------- checkpoints and resume


def test_resume_continues_exactly(text_file, tmp_path):
    cfg = tiny_run()
    model_a, whole = run(cfg, text_file, out_dir=tmp_path / "a")
    _, first = run(cfg, text_file, out_dir=tmp_path / "b", stop_after=3)
    assert [r["step"] for r in first] == [0, 1, 2, 3]
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == 3
    # a fresh process would build a fresh model: its other seed must not matter
    model_b, rest = run(cfg, text_file, seed=123, out_dir=tmp_path / "b", resume=True)
    assert [r["step"] for r in rest] == [4, 5, 6, 7]
    for key in ("loss", "lr", "grad_norm", "val_loss"):
        assert [r[key] for r in rest] == [r[key] for r in whole[4:]], key  # bitwise on CPU
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(pa, pb), name
    raw = (tmp_path / "b" / "metrics.jsonl").read_text()
    assert '"event": "resume", "from_step": 4' in raw
    log = read_log(tmp_path / "b" / "metrics.jsonl")
    assert [r["loss"] for r in log] == [r["loss"] for r in whole]
    assert log[-1]["elapsed"] >= first[-1]["elapsed"]  # elapsed time carries on across the resume


def test_checkpoint_holds_everything_a_resume_needs(text_file, tmp_path):
    cfg = tiny_run()
    run(cfg, text_file, out_dir=tmp_path, stop_after=1)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["step"] == 1
    assert state["model_config"] == asdict(cfg.model) and state["train_config"] == asdict(cfg)
    assert state["optimizer"]["state"] and state["scaler"] is None  # no grad scaler on CPU
    assert state["loaders"]["train"]["position"] == 2 * cfg.tokens_per_step
    assert set(state["rng"]) >= {"torch", "python"}


def test_checkpoint_write_is_atomic(tiny_config, tmp_path, monkeypatch):
    model = GPT(tiny_config)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, step=1)

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint, intact


def test_time_limit_stops_after_a_step_with_a_checkpoint_and_resume_continues(text_file, tmp_path):
    cfg = tiny_run(max_steps=6)
    _, whole = run(cfg, text_file)
    _, first = run(cfg, text_file, out_dir=tmp_path, time_limit=0.0)  # already late after the first step
    assert [r["step"] for r in first] == [0] and first[0]["val_loss"] is not None  # evaluated as a last step
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 0
    _, rest = run(cfg, text_file, out_dir=tmp_path, resume=True)
    assert [r["loss"] for r in first + rest] == [r["loss"] for r in whole]


def test_saving_and_resuming_remove_what_killed_saves_left(text_file, tmp_path):
    # kill -9 during torch.save leaves .ckpt.pt.tmp-<pid>; nothing else would ever delete it
    cfg = tiny_run(max_steps=4)
    out = tmp_path / "run"
    run(cfg, text_file, out_dir=out, stop_after=1)
    stale = [out / ".ckpt.pt.tmp-999999", out / ".ckpt.pt.tmp-123"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = out / "notes.tmp-1"  # not a checkpoint's temporary file
    keep.write_text("mine")
    run(cfg, text_file, out_dir=out, resume=True)
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    stale[0].write_bytes(b"half a checkpoint")
    save_checkpoint(out / "ckpt.pt", GPT(cfg.model), step=9)
    assert not stale[0].exists() and load_checkpoint(out / "ckpt.pt")["step"] == 9


def test_checkpoint_errors_name_the_problem(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a checkpoint of this course"):
        load_checkpoint(foreign)
    for bad, error, message in ((tmp_path / "missing.pt", FileNotFoundError, "not found"),
                                (junk, ValueError, "not a readable checkpoint"),
                                (foreign, ValueError, "not a checkpoint of this course")):
        with pytest.raises(error, match=message):  # model_from_checkpoint reads through load_checkpoint
            model_from_checkpoint(bad)
    path = save_checkpoint(tmp_path / "ckpt.pt", GPT(tiny_config), step=0)
    other = GPTConfig(**(asdict(tiny_config) | {"n_layer": 3}))
    with pytest.raises(ValueError, match=r"different model.*n_layer: checkpoint 2, model 3\): build the model "
                                         r"with the checkpoint's config \(model_from_checkpoint does\)"):
        restore_checkpoint(load_checkpoint(path), path, GPT(other))
    assert model_from_checkpoint(path).config == tiny_config  # builds the saved one


def test_restore_checkpoint_refuses_a_different_train_config(tmp_path):
    cfg = tiny_run()
    model = GPT(cfg.model)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, configure_optimizer(model, cfg), step=0, train_config=cfg)
    state = load_checkpoint(path)
    with pytest.raises(ValueError, match=r"ckpt\.pt' was trained with a different TrainConfig \(max_lr: checkpoint "
                                         r"0\.01, now 0\.003\): resume with the checkpoint's settings"):
        restore_checkpoint(state, path, GPT(cfg.model), train_config=replace(cfg, max_lr=3e-3))
    # what a resume may change (evaluation, saving, stopping, the speed switches) is not a difference
    relaxed = replace(cfg, eval_interval=5, target_loss=1.0, fused_head=True, fused_adamw=True)
    restore_checkpoint(state, path, GPT(cfg.model), train_config=relaxed)


def test_restore_checkpoint_and_model_from_checkpoint_round_trip(text_file, tmp_path):
    cfg = tiny_run(val_fraction=0.0)
    (model, *_), (opt, *_), (loader, *_) = three_copies(cfg, text_file)
    for step in range(2):
        train_step(model, opt, loader, cfg, step)
    torch.manual_seed(42)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, opt, step=1, train_config=cfg, loaders={"train": loader})
    next_draw = torch.rand(3)  # what the RNG gives right after the save
    idx = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(idx)[0]
        # model_from_checkpoint: the saved GPT, bit for bit
        built = model_from_checkpoint(path)
        assert built.config == cfg.model and torch.equal(built(idx)[0], logits)
    # restore_checkpoint: weights, optimizer, data position and RNG, into a fresh run
    set_seed(123)
    fresh = GPT(cfg.model)
    fresh_opt = configure_optimizer(fresh, cfg)
    fresh_loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=0.0)
    state = load_checkpoint(path)
    assert state["step"] == 1
    restore_checkpoint(state, path, fresh, fresh_opt, {"train": fresh_loader}, train_config=cfg)
    assert torch.equal(torch.rand(3), next_draw)
    assert fresh_loader.position == loader.position
    with torch.no_grad():
        assert torch.equal(fresh(idx)[0], logits)
    # and the next step is the one the saved run takes
    assert train_step(fresh, fresh_opt, fresh_loader, cfg, 2) == train_step(model, opt, loader, cfg, 2)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name


def test_resume_with_other_settings_is_refused(text_file, tmp_path):
    cfg = tiny_run()
    run(cfg, text_file, out_dir=tmp_path, stop_after=1)
    before = (tmp_path / "ckpt.pt").read_bytes(), (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match="different TrainConfig.*max_lr"):
        run(tiny_run(max_lr=3e-3), text_file, out_dir=tmp_path, resume=True)
    assert before == ((tmp_path / "ckpt.pt").read_bytes(), (tmp_path / "metrics.jsonl").read_bytes())
    run(tiny_run(eval_interval=2), text_file, out_dir=tmp_path, resume=True, stop_after=2)  # allowed to change
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(cfg, text_file, out_dir=tmp_path / "empty", resume=True)
    assert before[0] != (tmp_path / "ckpt.pt").read_bytes()  # the allowed resume did save


def test_a_checkpoint_from_before_adam_eps_resumes_with_its_default(text_file, tmp_path):
    # checkpoints written before TrainConfig had adam_eps trained with torch's 1e-8
    cfg = tiny_run()
    _, whole = run(cfg, text_file, out_dir=tmp_path / "a")
    run(cfg, text_file, out_dir=tmp_path / "b", stop_after=3)
    state = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    del state["train_config"]["adam_eps"]
    torch.save(state, tmp_path / "b" / "ckpt.pt")
    _, rest = run(cfg, text_file, out_dir=tmp_path / "b", resume=True)
    assert [r["loss"] for r in rest] == [r["loss"] for r in whole[4:]]
    with pytest.raises(ValueError, match="different TrainConfig.*adam_eps: checkpoint 1e-08, now 1e-06"):
        run(tiny_run(adam_eps=1e-6), text_file, out_dir=tmp_path / "b", resume=True)


def test_an_earlier_run_is_never_overwritten(text_file, tmp_path):
    cfg = tiny_run()
    run(cfg, text_file, out_dir=tmp_path / "run", stop_after=1)
    files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(FileExistsError, match="ckpt.pt' already exists: pass resume=True"):
        run(cfg, text_file, out_dir=tmp_path / "run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == files


def test_a_log_without_a_checkpoint_is_kept_and_the_run_starts_afresh(text_file, tmp_path, capsys):
    # a run that stopped before its first checkpoint must not lock its folder, nor lose its log
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 9.0}\n')
    _, history = run(tiny_run(max_steps=2), text_file, out_dir=tmp_path)
    kept = list(tmp_path.glob("metrics.before-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == '{"step": 0, "loss": 9.0}\n'
    assert "kept it as metrics.before-" in capsys.readouterr().out
    assert [r["loss"] for r in read_log(tmp_path / "metrics.jsonl")] == [r["loss"] for r in history]


def test_logs_kept_in_the_same_second_do_not_overwrite_each_other(text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(gpt_helpers.time, "strftime", lambda fmt: "20261130-120000")  # one second for both
    for n in (1, 2, 3):
        (tmp_path / "metrics.jsonl").write_text(f'{{"step": 0, "loss": {n}.0}}\n')
        gpt_helpers.RunFolder(tmp_path, resume=False)
    kept = sorted(p.read_text() for p in tmp_path.glob("metrics.before-20261130-120000*.jsonl"))
    assert kept == [f'{{"step": 0, "loss": {n}.0}}\n' for n in (1, 2, 3)]


def test_stop_after_before_the_resumed_step_is_refused_before_anything_is_written(text_file, tmp_path):
    cfg = tiny_run()
    run(cfg, text_file, out_dir=tmp_path, stop_after=3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="stop_after=2 comes before step 4, where this resumed run begins"):
        run(cfg, text_file, out_dir=tmp_path, resume=True, stop_after=2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_run_records_its_data_as_an_absolute_path(text_file, tmp_path, monkeypatch):
    # so train.py --resume finds it from any folder; input.txt, the default, is recorded as None
    monkeypatch.chdir(text_file.parent)
    cfg = tiny_run(max_steps=1)
    set_seed(0)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file.name, val_fraction=cfg.val_fraction)
    train(GPT(cfg.model), cfg, train_loader=loader, out_dir=tmp_path / "a")
    assert load_checkpoint(tmp_path / "a" / "ckpt.pt")["extra"]["data"] == str(text_file.resolve())
    set_seed(0)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, val_fraction=cfg.val_fraction)  # input.txt
    train(GPT(cfg.model), cfg, train_loader=loader, out_dir=tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["extra"]["data"] is None


def test_a_checkpoint_of_weights_alone_is_not_resumed(text_file, tmp_path):
    # save_checkpoint(path, model) keeps no optimizer state or data positions: resuming it could not be exact
    cfg = tiny_run()
    save_checkpoint(tmp_path / "ckpt.pt", GPT(cfg.model), step=3, train_config=cfg)
    before = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(ValueError, match="holds weights only, not the optimizer's state.*model_from_checkpoint"):
        run(cfg, text_file, out_dir=tmp_path, resume=True)
    assert (tmp_path / "ckpt.pt").read_bytes() == before and not (tmp_path / "metrics.jsonl").exists()


def test_a_step_interrupted_during_its_evaluation_is_still_logged(text_file, tmp_path, monkeypatch):
    cfg = tiny_run()
    _, whole = run(cfg, text_file, out_dir=tmp_path / "a")
    evaluate = gpt_helpers.estimate_loss

    def interrupted_at_step_3(model, loader, iters, **kwargs):  # step 3 is the second evaluation (interval 3)
        interrupted_at_step_3.calls += 1
        if interrupted_at_step_3.calls == 2:
            raise KeyboardInterrupt
        return evaluate(model, loader, iters, **kwargs)

    interrupted_at_step_3.calls = 0
    monkeypatch.setattr(gpt_helpers, "estimate_loss", interrupted_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, text_file, out_dir=tmp_path / "b")
    monkeypatch.setattr(gpt_helpers, "estimate_loss", evaluate)
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == 3  # its update went through
    run(cfg, text_file, seed=123, out_dir=tmp_path / "b", resume=True)
    log = read_log(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(cfg.max_steps))  # no gap at step 3
    assert [r["loss"] for r in log] == [r["loss"] for r in whole]
    assert log[3]["val_loss"] is None and whole[3]["val_loss"] is not None  # its evaluation never finished


def test_a_full_disk_is_reported_and_the_previous_checkpoint_kept(tmp_path, tiny_config):
    import subprocess
    import sys

    path = save_checkpoint(tmp_path / "ckpt.pt", GPT(tiny_config), step=1)
    before = path.read_bytes()
    big = "GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64)"  # about 13 MB of weights
    code = (f"import gpt_helpers as g\ng.save_checkpoint({str(path)!r}, g.GPT(g.{big}), step=2)")
    # ulimit -f: no file may grow past 1 MiB, as on a full disk (Python ignores SIGXFSZ, so the write fails)
    proc = subprocess.run(["bash", "-c", f'ulimit -f 1024; exec "{sys.executable}" -c "$0"', code],
                          cwd=gpt_helpers.ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"OSError: could not write checkpoint {str(path)!r}" in proc.stderr and "free some disk space" in proc.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


class InterruptingLoader(DataLoaderLite):
    """Raises KeyboardInterrupt on its n-th batch, as Ctrl-C in the middle of a step would."""

    def __init__(self, *args, interrupt_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.interrupt_at = 0, interrupt_at

    def next_batch(self):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().next_batch()


@pytest.mark.parametrize("interrupt_at", [6, 7])  # 2 micro-batches a step: 6 is step 2's second, 7 is step 3's first
def test_an_interrupted_run_saves_its_last_finished_step_and_resumes_exactly(text_file, tmp_path, interrupt_at):
    cfg = tiny_run()
    _, whole = run(cfg, text_file, out_dir=tmp_path / "a")
    set_seed(0)
    loader = InterruptingLoader(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=cfg.val_fraction,
                                interrupt_at=interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        train(GPT(cfg.model), cfg, train_loader=loader, out_dir=tmp_path / "b")
    finished = (interrupt_at - 1) // cfg.grad_accum_steps - 1  # the last step whose update went through
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == finished
    _, rest = run(cfg, text_file, seed=123, out_dir=tmp_path / "b", resume=True)
    assert [r["step"] for r in rest] == list(range(finished + 1, cfg.max_steps))
    assert [r["loss"] for r in rest] == [r["loss"] for r in whole[finished + 1:]]  # bitwise on CPU


# ----------------------------------------------------------------------------- the fast path


def test_fast_path_on_a_cpu(tiny_config):
    model = GPT(tiny_config)
    before = get_tf32()
    try:
        set_tf32((True, False))  # whatever it was, close() puts back
        # every switch on but compile: on a CPU only the fused head and fused AdamW apply
        cfg = replace(tiny_run(), tf32=True, autocast=True, fused_adamw=True, fused_head=True)
        fast = FastPath(model, cfg, "cpu")
        assert fast.model is model  # not compiled: the very same module
        assert fast.loss_fn is fused_head_model_loss and fast.scaler is None and fast.amp_dtype is None
        assert fast.step_args == {"device": torch.device("cpu"), "loss_fn": fused_head_model_loss,
                                  "autocast": fast.autocast}
        assert get_tf32() == (True, False)  # TF32 is a CUDA switch: untouched here
        idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
        with fast.autocast():  # a no-op context on a CPU: fp32 throughout
            assert not torch.is_autocast_enabled("cpu")
            assert model(idx)[0].dtype == torch.float32
        fast.synchronize()  # nothing to wait for, and no error
        set_tf32(False)  # e.g. a notebook cell in between
        fast.close()
        assert get_tf32() == (True, False)
        plain = FastPath(model, tiny_run(), "cpu")  # every switch off
        assert plain.model is model and plain.loss_fn is model_loss
        plain.close()
    finally:
        set_tf32(before)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")  # importing torch.compile
def test_fast_path_compiles_and_then_keeps_the_plain_loss(tiny_config):
    model = GPT(tiny_config)
    fast = FastPath(model, tiny_run(compile=True, fused_head=True), "cpu")  # torch.compile is lazy: cheap here
    try:
        assert fast.model is not model and gpt_helpers.unwrap(fast.model) is model
        assert fast.loss_fn is model_loss  # compiled, Inductor fuses the plain loss
    finally:
        fast.close()


def test_fast_path_refuses_the_fused_head_for_a_model_that_is_not_a_gpt():
    with pytest.raises(ValueError, match=r"fused_head=True needs gpt_helpers.GPT .*got Linear: "
                                         r"set TrainConfig.fused_head=False"):
        FastPath(torch.nn.Linear(2, 2), tiny_run(fused_head=True), "cpu")
    FastPath(torch.nn.Linear(2, 2), tiny_run(), "cpu").close()  # the plain path takes any model


def test_autocast_dtype_follows_the_gpu_generation(monkeypatch):
    # bf16 needs Ampere (compute capability 8) or newer; a T4 (7.5) gets fp16 and train() a grad scaler
    from gpt_helpers import autocast_dtype

    assert autocast_dtype("cpu") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert autocast_dtype("cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert autocast_dtype("cuda") == torch.bfloat16


def test_a_diverged_step_leaves_the_weights_and_optimizer_as_they_were(text_file):
    cfg = tiny_run()
    set_seed(0)
    model = GPT(cfg.model)
    optimizer = gpt_helpers.configure_optimizer(model, cfg)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, path=text_file, val_fraction=cfg.val_fraction)
    gpt_helpers.train_step(model, optimizer, loader, cfg, 0)  # one good step: AdamW has moments now
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in optimizer.state.values()]

    def nan_loss(m, x, y):
        return gpt_helpers.model_loss(m, x, y) * float("nan")

    with pytest.raises(FloatingPointError, match="diverged.*weights are those from before this step"):
        gpt_helpers.train_step(model, optimizer, loader, cfg, 1, loss_fn=nan_loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, optimizer.state.values()))
