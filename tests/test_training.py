"""Training: the LR schedule, AdamW's parameter groups, gradient accumulation, the loop,
its metrics log, early stopping, checkpoints (atomic, exact resume) and their errors."""

import importlib.util
import json
import math
from dataclasses import asdict

import pytest
import torch

import gpt_helpers
from gpt_helpers import (
    PRESETS,
    GPT,
    DataLoaderLite,
    GPTConfig,
    TrainConfig,
    configure_optimizer,
    get_lr,
    get_preset,
    load_checkpoint,
    preset_name,
    read_checkpoint,
    read_log,
    save_checkpoint,
    set_seed,
    train,
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
    return model, train(model, cfg, train_loader=loader, progress=False, **kwargs)


# ----------------------------------------------------------------------------- schedule


def test_lr_schedule_boundaries_of_the_gpu_preset():
    cfg = PRESETS["gpu"]
    max_lr, min_lr = cfg.max_lr, cfg.max_lr * cfg.min_lr_ratio
    assert get_lr(0, cfg) == pytest.approx(max_lr / cfg.warmup_steps)  # > 0: step 0 already learns
    assert get_lr(0, cfg) > 0
    assert get_lr(cfg.warmup_steps - 1, cfg) == pytest.approx(max_lr)  # warmup ends at the peak
    assert get_lr(cfg.warmup_steps, cfg) == pytest.approx(max_lr)
    assert get_lr(cfg.max_steps, cfg) == pytest.approx(min_lr)
    assert get_lr(cfg.max_steps + 1, cfg) == pytest.approx(min_lr)
    assert get_lr(10 * cfg.max_steps, cfg) == pytest.approx(min_lr)
    mid = (cfg.warmup_steps + cfg.max_steps) // 2
    assert get_lr(mid, cfg) == pytest.approx((max_lr + min_lr) / 2)  # cosine: halfway at the midpoint
    warm = [get_lr(s, cfg) for s in range(cfg.warmup_steps)]
    decay = [get_lr(s, cfg) for s in range(cfg.warmup_steps, cfg.max_steps + 1)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert min(decay) >= min_lr - 1e-12 and max(warm + decay) <= max_lr + 1e-12


def test_gpu_preset_is_the_original_run():
    cfg = PRESETS["gpu"]
    assert cfg == TrainConfig() and cfg.model == GPTConfig()
    assert (cfg.max_lr, cfg.weight_decay, cfg.beta1, cfg.beta2) == (6e-4, 0.1, 0.9, 0.95)
    assert (cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio) == (500, 10_000, 0.1)
    assert (cfg.grad_accum_steps, cfg.grad_clip, cfg.target_loss) == (4, 1.0, 0.099)


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
    ("val_fraction", 1.0, "val_fraction must be in"),
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
    assert opt.defaults["betas"] == (0.9, 0.95) and not opt.defaults.get("fused")  # fused is for CUDA
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & kept
    assert decayed | kept == set(names.values())  # every parameter once (the tied matrix too)
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed  # tied: one name
    assert all(n.endswith(".weight") for n in decayed)
    assert all(n.endswith(".bias") or ".ln_" in n or "ln_f" in n for n in kept)
    assert {n for n in names.values() if n.endswith(".bias") or "ln_" in n} == kept


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


def test_the_fused_loss_trains_as_the_plain_loss(text_file, monkeypatch):
    # on the CPU train() uses the fused head + loss by default: same run, up to float rounding
    calls = []
    fused_head_loss = gpt_helpers.fused_head_loss
    monkeypatch.setattr(gpt_helpers, "fused_head_loss", lambda *a, **k: calls.append(1) or fused_head_loss(*a, **k))
    _, fused = run(tiny_run(), text_file)
    n_fused = len(calls)
    _, plain = run(tiny_run(), text_file, fused_loss=False)
    assert n_fused > 0 and len(calls) == n_fused  # the default used it, fused_loss=False did not
    for a, b in zip(fused, plain):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
        assert (a["val_loss"] is None) == (b["val_loss"] is None)
        if a["val_loss"] is not None:
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_train_runs_a_model_whose_forward_has_no_return_logits(text_file):
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
    history = train(model, cfg, train_loader=loader, progress=False)  # the plain loss: no fused path to ask for
    assert [r["step"] for r in history] == [0, 1, 2] and history[0]["val_loss"] is not None
    with pytest.raises(ValueError, match="fused_loss=True needs gpt_helpers.GPT"):
        train(model, cfg, train_loader=loader, progress=False, fused_loss=True)


# ----------------------------------------------------------------------------- the loop and its log


def test_metrics_log_has_one_record_per_step(text_file, tmp_path):
    cfg = tiny_run()
    _, history = run(cfg, text_file, out_dir=tmp_path / "run")
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    assert log == json.loads(json.dumps(history))
    assert [r["step"] for r in log] == list(range(cfg.max_steps))
    for r in log:
        assert set(r) == LOG_KEYS
        assert r["lr"] == pytest.approx(get_lr(r["step"], cfg))
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
    assert read_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == history[-1]["step"]


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
        train(model, cfg, train_loader=loader, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "ckpt.pt").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_says_how_to_install_it(text_file, tmp_path):
    with pytest.raises(ImportError, match="pip install tensorboard"):
        run(tiny_run(), text_file, out_dir=tmp_path / "run", tensorboard=True)
    assert not (tmp_path / "run").exists()  # nothing was started


def test_tensorboard_needs_an_out_dir(text_file):
    with pytest.raises(ValueError, match="needs an out_dir"):
        run(tiny_run(), text_file, tensorboard=True)


# ----------------------------------------------------------------------------- checkpoints and resume


def test_resume_continues_exactly(text_file, tmp_path):
    cfg = tiny_run()
    model_a, whole = run(cfg, text_file, out_dir=tmp_path / "a")
    _, first = run(cfg, text_file, out_dir=tmp_path / "b", stop_after=3)
    assert [r["step"] for r in first] == [0, 1, 2, 3]
    assert read_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == 3
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
    state = read_checkpoint(tmp_path / "ckpt.pt")
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
    path = save_checkpoint(tmp_path / "ckpt.pt", GPT(tiny_config), step=0)
    other = GPTConfig(**(asdict(tiny_config) | {"n_layer": 3}))
    with pytest.raises(ValueError, match="different model.*n_layer: checkpoint 2, model 3"):
        load_checkpoint(path, GPT(other))
    assert load_checkpoint(path)["model"].config == tiny_config  # model=None builds the saved one


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
        train(GPT(cfg.model), cfg, train_loader=loader, out_dir=tmp_path / "b", progress=False)
    finished = (interrupt_at - 1) // cfg.grad_accum_steps - 1  # the last step whose update went through
    assert read_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == finished
    _, rest = run(cfg, text_file, seed=123, out_dir=tmp_path / "b", resume=True)
    assert [r["step"] for r in rest] == list(range(finished + 1, cfg.max_steps))
    assert [r["loss"] for r in rest] == [r["loss"] for r in whole[finished + 1:]]  # bitwise on CPU


def test_autocast_dtype_follows_the_gpu_generation(monkeypatch):
    # bf16 needs Ampere (compute capability 8) or newer; a T4 (7.5) gets fp16 and train() a grad scaler
    from gpt_helpers import autocast_dtype

    assert autocast_dtype("cpu") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert autocast_dtype("cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert autocast_dtype("cuda") == torch.bfloat16
