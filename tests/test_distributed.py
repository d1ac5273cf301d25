"""Data parallelism (notebook 09): each rank's slice of the data, Distributed (PyTorch's DDP
behind torchrun), no_sync in train_step, and real two-process gloo runs of train.py on the CPU
that match one process with the same tokens per step, resume included in both directions.

The tolerance: a two-process step adds the same micro-batch losses and gradients as one process,
in another order (each rank sums its own, then the all-reduce averages the ranks), so float32
rounding differs. Losses agree to 1e-5, and the weights after 6 AdamW steps to 1e-5: AdamW's
first steps divide by the root of tiny squared gradients, which magnifies rounding to about 1e-6.
"""

import contextlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import train as train_script
from gpt_helpers import (
    PRESETS,
    GPT,
    DataLoaderLite,
    Distributed,
    FastPath,
    GPTConfig,
    all_reduce_seconds,
    fused_head_model_loss,
    load_checkpoint,
    model_loss,
    read_log,
    set_seed,
    train,
    train_step,
    unwrap,
)

ROOT = Path(__file__).resolve().parent.parent
SMOKE = PRESETS["smoke"]
ATOL = 1e-5  # see the module docstring
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def no_torchrun_env(monkeypatch):
    """These tests run in one plain process, whatever launched pytest."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def text_file(path, n_words=120):
    path.write_text(" ".join(f"w{i % 37}" for i in range(n_words)), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- each rank's slice


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_read_the_batches_of_one_process_in_its_order(tmp_path, world_size):
    path = text_file(tmp_path / "a.txt")
    B, T = 2, 4
    one = DataLoaderLite(B, T, path, val_fraction=0.0)
    ranks = [DataLoaderLite(B, T, path, val_fraction=0.0, rank=r, world_size=world_size) for r in range(world_size)]
    n_batches = (len(one.tokens) - 1) // (B * T)
    for round_ in range(3 * n_batches):  # several epochs: the wrap included
        for r, loader in enumerate(ranks):
            x, y = loader.next_batch()
            x1, y1 = one.next_batch()
            assert torch.equal(x, x1) and torch.equal(y, y1), f"round {round_}, rank {r}"


def test_rank_r_starts_at_r_batches_and_steps_over_the_others(tmp_path):
    path = text_file(tmp_path / "a.txt", 400)
    tokens = DataLoaderLite(1, 4, path, val_fraction=0.0).tokens
    B, T, N = 2, 4, 3
    for r in range(N):
        loader = DataLoaderLite(B, T, path, val_fraction=0.0, rank=r, world_size=N)
        for i in range(3):
            start = r * B * T + i * B * T * N  # starts at rank * B*T, advances by B*T*world_size
            x, _ = loader.next_batch()
            assert torch.equal(x.flatten(), tokens[start : start + B * T])


def test_a_loaders_state_is_the_same_on_every_rank_and_for_one_process(tmp_path):
    # so a checkpoint (rank 0's) resumes on any number of processes at the same place
    path = text_file(tmp_path / "a.txt")
    one = DataLoaderLite(2, 4, path, val_fraction=0.0)
    pair = [DataLoaderLite(2, 4, path, val_fraction=0.0, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):
        for loader in pair:
            loader.next_batch()
        one.next_batch(), one.next_batch()
        assert pair[0].state_dict() == pair[1].state_dict() == one.state_dict()


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0), (0, 1.5)])
def test_a_bad_rank_or_world_size_is_refused(tmp_path, rank, world_size):
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1"):
        DataLoaderLite(2, 4, text_file(tmp_path / "a.txt"), rank=rank, world_size=world_size)


# ----------------------------------------------------------------------------- Distributed


def test_without_torchrun_the_world_is_this_process_alone():
    world = Distributed("cpu")
    assert (world.rank, world.world_size, world.is_main, world.device) == (0, 1, True, torch.device("cpu"))
    model = nn.Linear(2, 2)
    assert world.wrap(model) is model  # no DDP wrapper for one process
    assert world.all_reduce_mean(2.5) == 2.5
    assert world.share(SMOKE, {}) == SMOKE
    world.barrier()
    world.close()
    assert not torch.distributed.is_initialized()


def pretend_world(world_size, rank=0):
    """A Distributed as rank `rank` of `world_size` sees it, without starting any process group:
    enough for the checks that come before any communication."""
    world = Distributed("cpu")
    world.rank, world.world_size, world.is_main = rank, world_size, rank == 0
    return world


def test_each_rank_runs_its_share_of_the_micro_batches_and_evaluation():
    cfg = replace(SMOKE, grad_accum_steps=8, eval_iters=5)
    share = pretend_world(4).share(cfg, {})
    assert (share.grad_accum_steps, share.eval_iters) == (2, 2)  # 8 / 4, and 5 / 4 rounded up
    assert share.tokens_per_step * 4 == cfg.tokens_per_step  # B*T*K*N: the tokens of one process's step


def test_grad_accum_not_divisible_by_the_processes_is_refused_with_what_to_do():
    with pytest.raises(ValueError) as info:
        pretend_world(3).share(SMOKE, {})  # smoke: grad_accum_steps 2
    message = str(info.value)
    assert "grad_accum_steps 2 cannot be shared by 3 processes" in message
    assert f"B*T*K = {SMOKE.tokens_per_step:,} tokens" in message and "Run on 1, 2 processes" in message


def test_loaders_for_another_rank_are_refused(tmp_path):
    loader = DataLoaderLite(2, 4, text_file(tmp_path / "a.txt"), rank=0, world_size=1)
    with pytest.raises(ValueError, match="the train loader reads the slice of rank 0 of 1 processes, this is rank 1 of 2"):
        pretend_world(2, rank=1).share(SMOKE, {"train": loader})


def test_train_refuses_a_world_that_cannot_share_the_step_before_writing(tmp_path):
    cfg = replace(SMOKE, model=GPTConfig(block_size=16, n_layer=1, n_head=1, n_embd=8), seq_len=16, batch_size=1)
    with pytest.raises(ValueError, match="cannot be shared by 3 processes"):
        train(GPT(cfg.model), cfg, out_dir=tmp_path / "run", world=pretend_world(3))
    assert not (tmp_path / "run").exists()


class RecordingDDP(nn.Module):
    """Stands in for DistributedDataParallel: records whether each forward and backward ran
    inside no_sync(), as DDP decides from that whether the backward all-reduces."""

    def __init__(self, module):
        super().__init__()
        self.module, self.syncing, self.seen = module, True, []

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, idx, targets=None):
        logits, loss = self.module(idx, targets)
        loss.register_hook(lambda grad: self.seen.append(("backward", self.syncing)) or grad)
        self.seen.append(("forward", self.syncing))
        return logits, loss


def test_train_step_all_reduces_only_after_the_last_micro_batch(tmp_path):
    cfg = replace(SMOKE, grad_accum_steps=4)
    set_seed(0)
    model = RecordingDDP(GPT(cfg.model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoaderLite(cfg.batch_size, cfg.seq_len, text_file(tmp_path / "a.txt", 2000), val_fraction=0.0)
    train_step(model, optimizer, loader, cfg, 0)
    assert model.seen == [("forward", False), ("backward", False)] * 3 + [("forward", True), ("backward", True)]


def test_a_ddp_model_unwraps_to_its_gpt_and_keeps_the_plain_loss(tmp_path):
    # a real (one-process) gloo group, so that DistributedDataParallel can be built here
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = GPT(SMOKE.model)
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap(ddp) is model and list(unwrap(ddp).state_dict()) == list(model.state_dict())
        fast = FastPath(ddp, replace(SMOKE, fused_head=True), "cpu")
        assert fast.loss_fn is model_loss  # the fused head would call hidden_states past DDP's forward
        assert FastPath(model, replace(SMOKE, fused_head=True), "cpu").loss_fn is fused_head_model_loss
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("flags", [[], ["--no-compile"], ["--compile"]])
def test_under_ddp_train_py_keeps_the_plain_loss(flags):
    # the fused head calls the model's hidden_states past DDP's forward, which must run to all-reduce
    args = train_script.build_parser().parse_args(flags)
    args.device = "cpu"
    assert not train_script.speed_switches(args, world_size=2)["fused_head"]
    assert train_script.speed_switches(args, world_size=1)["fused_head"] == ("--compile" not in flags)


def test_all_reduce_seconds_is_the_ring_formula():
    # 2 (N-1)/N of the data each way: 1 GB over 4 processes at 100 GB/s is 15 ms
    assert all_reduce_seconds(1e9, 4, 100e9) == pytest.approx(0.015)
    assert all_reduce_seconds(1e9, 1, 100e9) == 0.0  # one process: nothing to send


# ----------------------------------------------------------------------------- two processes, gloo


def torchrun(n, *args):
    """train.py under torchrun, n processes on the CPU (gloo); --standalone picks a free port."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           str(ROOT / "train.py"), "--preset", "smoke", "--device", "cpu", "--sample-tokens", "0",
                           *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV} | {"OMP_NUM_THREADS": "1"})


def one_process(out, *args):
    """train.py in this process, as `python train.py --preset smoke --device cpu`, on one thread as
    each torchrun process (a busy 2-core machine runs two threads many times slower than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_script.main(["--preset", "smoke", "--device", "cpu", "--sample-tokens", "0",
                                  "--out-dir", str(out), *map(str, args)]) == 0
    finally:
        torch.set_num_threads(threads)


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=0, msg=k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process start to end and stopped after step 2; two processes start to end; and two
    processes resuming the one-process run at step 3 and stopping after step 4."""
    base = tmp_path_factory.mktemp("ddp")
    for name in ("one", "one_stopped"):
        with pytest.MonkeyPatch.context() as mp:
            for var in TORCHRUN_ENV:
                mp.delenv(var, raising=False)
            one_process(base / name, *(["--stop-after", 2] if name == "one_stopped" else []))
    two = torchrun(2, "--out-dir", base / "two")
    resumed = torchrun(2, "--out-dir", base / "one_stopped", "--resume", "--stop-after", 4)
    return base, two, resumed


def test_two_processes_match_one_process_at_the_same_tokens_per_step(runs):
    base, two, _ = runs
    assert two.returncode == 0, two.stderr[-3000:]
    one_log, two_log = read_log(base / "one" / "metrics.jsonl"), read_log(base / "two" / "metrics.jsonl")
    assert [r["step"] for r in two_log] == list(range(SMOKE.max_steps))
    for a, b in zip(one_log, two_log):
        assert b["loss"] == pytest.approx(a["loss"], abs=ATOL), a["step"]
        assert (a["val_loss"] is None) == (b["val_loss"] is None)
        if a["val_loss"] is not None:  # each rank evaluates 1 of the 2 batches, then the all-reduced mean
            assert b["val_loss"] == pytest.approx(a["val_loss"], abs=ATOL), a["step"]
    assert_same_weights(weights(base / "two" / "ckpt.pt"), weights(base / "one" / "ckpt.pt"))


def test_only_rank_0_prints_logs_and_saves(runs):
    base, two, _ = runs
    assert two.stdout.count("settings: preset 'smoke'") == 1
    assert "processes: 2 in DDP over gloo" in two.stdout
    assert "tokens per step: 256 (B 4 x T 32 x accum 2 = 1 x 2 processes)" in two.stdout
    lines = (base / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == SMOKE.max_steps  # one record a step, not one per rank
    state = load_checkpoint(base / "two" / "ckpt.pt")
    assert state["extra"]["world_size"] == 2 and state["step"] == SMOKE.max_steps - 1
    assert sorted(p.name for p in (base / "two").iterdir()) == ["ckpt.pt", "metrics.jsonl"]


def test_a_one_process_checkpoint_resumes_on_two_and_back_on_one(runs):
    base, _, resumed = runs
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming a run saved by 1 process(es) on 2" in resumed.stdout
    assert load_checkpoint(base / "one_stopped" / "ckpt.pt")["extra"]["world_size"] == 2
    one_process(base / "one_stopped", "--resume")  # saved by 2 processes, finished by 1
    whole = read_log(base / "one" / "metrics.jsonl")
    pieced = read_log(base / "one_stopped" / "metrics.jsonl")  # steps 0-2 on 1, 3-4 on 2, 5 on 1 process
    assert [r["step"] for r in pieced] == list(range(SMOKE.max_steps))
    for a, b in zip(whole, pieced):
        assert b["loss"] == pytest.approx(a["loss"], abs=ATOL), a["step"]
    assert_same_weights(weights(base / "one_stopped" / "ckpt.pt"), weights(base / "one" / "ckpt.pt"))



@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per process: 2 GPUs")
def test_two_gpus_with_nccl_match_one_gpu(tmp_path):
    # fp32 and eager on both sides (no TF32, autocast or compile), so only the order of the sums differs
    plain = ["--no-tf32", "--no-autocast", "--no-compile", "--no-fused-head"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "train.py"), "--preset", "smoke", "--device", "cuda", "--sample-tokens", "0",
                          "--out-dir", str(tmp_path / "two"), *plain], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "processes: 2 in DDP over NCCL" in two.stdout
    assert train_script.main(["--preset", "smoke", "--device", "cuda", "--sample-tokens", "0",
                              "--out-dir", str(tmp_path / "one"), *plain]) == 0
    for a, b in zip(read_log(tmp_path / "one" / "metrics.jsonl"), read_log(tmp_path / "two" / "metrics.jsonl")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), a["step"]
    assert_same_weights(weights(tmp_path / "two" / "ckpt.pt"), weights(tmp_path / "one" / "ckpt.pt"))
