"""Draw the course's diagrams and keep them in the notebooks.

    python scripts/diagrams.py render [--out DIR]            # write every diagram as DIR/NAME.png
    python scripts/diagrams.py embed [--notebooks-dir DIR] [--as attachment|output]
    python scripts/diagrams.py check [--notebooks-dir DIR] [--stale]

Each diagram is a function here that returns PNG bytes, drawn with matplotlib and nothing else
(boxes, arrows, labels), the same bytes on every run. `embed` puts it into its notebook right after
its anchor (the one markdown cell that contains the anchor text), in cells with stable ids; run
again, it rewrites those cells where they stand, so the anchor only places a diagram the first time.
The picture travels inside the .ipynb file, so it needs no network and no other file:

- `--as attachment` (the default): one markdown cell, `![alt](attachment:NAME.png)` and a caption,
  with the PNG as the cell's attachment. JupyterLab, Jupyter Notebook and VS Code render it; Colab
  does not render markdown-cell attachments (googlecolab/colabtools#3836, open), and GitHub's
  notebook view has not always either (jupyter/notebook#4853).
- `--as output`: a one-line code cell calling `show(NAME)` whose saved output is the PNG, then a
  markdown cell with the caption. A saved output renders everywhere a plot does (JupyterLab,
  GitHub, Colab); the execution counts after it are renumbered as a fresh run would number them.

`check` prints what tests/test_notebook_images.py asserts (every image reference resolves inside
the notebook, every attachment is referenced, every lesson has a diagram), plus any diagram of
this file whose cell is missing; with --stale, also the diagrams whose bytes differ from what this
file draws now (the same matplotlib, Pillow and fonts draw the same bytes).
"""

import argparse
import base64
import binascii
import io
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
if str(ROOT) not in sys.path:  # the diagrams take their sizes from gpt_helpers
    sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------------------------------------
# The look: one width, one palette, one meaning per colour in every diagram
# ---------------------------------------------------------------------------------------------

WIDTH = 7.0  # inches; at DPI that is 910 px, still readable when a page shows it 700 px wide
DPI = 130
INK = "#24292f"  # text and outlines
MUTED = "#57606a"  # arrows, shapes, notes
ACCENT = "#b3403a"  # the one thing to notice: a mask, a clip, the tie, a transpose
KINDS = {  # fill, edge
    "tensor": ("#e3edf7", "#3f6fa5"),  # activations: what flows through the model
    "layer": ("#fbecd6", "#b7791f"),  # modules with weights (Linear, Embedding, LayerNorm)
    "op": ("#e6f2e3", "#4a8a47"),  # operations without weights (softmax, add, view)
    "plain": ("#f2f3f5", "#8c959f"),  # everything else
}
HEADS = ("#9dbfe3", "#f2c48d", "#a9d3a0", "#d3b3d6")  # head 0..3, in notebook 01's diagram
SIZE = 10  # points: the text size of a box label
SMALL = 8.5  # points: shapes and notes


def canvas(height: float):
    """A blank figure WIDTH x height inches whose data coordinates are inches, origin bottom left."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def png_bytes(fig) -> bytes:
    """The figure as a 256-colour PNG (a third of the size of matplotlib's RGBA, the same to the eye),
    with no metadata that changes between runs or machines."""
    from PIL import Image  # matplotlib depends on Pillow

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    image = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def box(ax, x, y, w, h, text="", kind="layer", size=SIZE, mono=False, fill=None, edge=None, lw=1.2, ls="-",
        rounding=0.05, zorder=1):
    """A rounded box with (x, y) its bottom left corner and `text` centred in it."""
    from matplotlib.patches import FancyBboxPatch

    fc, ec = KINDS[kind]
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={rounding}",
                                fc=fill or fc, ec=edge or ec, lw=lw, ls=ls, zorder=zorder))
    if text:
        note(ax, x + w / 2, y + h / 2, text, size=size, color=INK, mono=mono)


def grid(ax, x, y, w, h, cols=(), rows=0, kind="tensor", lw=1.1, edge=None):
    """A tensor drawn as a block: `cols` are the colours of equal column strips (one per head, say),
    `rows` faint lines split it into that many rows (tokens)."""
    from matplotlib.patches import Rectangle

    fc, ec = KINDS[kind]
    cols = cols or (fc,)
    cw = w / len(cols)
    for i, c in enumerate(cols):
        ax.add_patch(Rectangle((x + i * cw, y), cw, h, fc=c, ec="white", lw=0.6))
    for r in range(1, rows):
        ax.plot([x, x + w], [y + r * h / rows] * 2, color="white", lw=0.8)
    ax.add_patch(Rectangle((x, y), w, h, fc="none", ec=edge or ec, lw=lw))


def arrow(ax, start, end, color=MUTED, lw=1.3, ls="-", rad=0.0, head=9):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=head,
                                 color=color, lw=lw, ls=ls, shrinkA=1, shrinkB=1,
                                 connectionstyle=f"arc3,rad={rad}"))


def line(ax, xs, ys, color=MUTED, lw=1.3, ls="-", zorder=2):
    ax.plot(xs, ys, color=color, lw=lw, ls=ls, solid_capstyle="butt", zorder=zorder)


def note(ax, x, y, text, size=SMALL, color=MUTED, ha="center", va="center", mono=False, weight="normal",
         style="normal"):
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, color=color, weight=weight, style=style,
            family="DejaVu Sans Mono" if mono else "DejaVu Sans", linespacing=1.25)


def draw(function):
    """Run a drawing function under matplotlib's default style, so no matplotlibrc changes a pixel."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context({"mathtext.fontset": "dejavusans"}):
        fig = function()
        return png_bytes(fig)


# ---------------------------------------------------------------------------------------------
# 01 attention: q, k, v split into heads and back
# ---------------------------------------------------------------------------------------------

def _stack(ax, cx, y, w, h, colours, dx=0.11, dy=0.08):
    """nh cards one behind the other (a batch dimension), the first in front, centred on cx."""
    x0 = cx - (w + dx * (len(colours) - 1)) / 2
    for i in reversed(range(len(colours))):
        grid(ax, x0 + i * dx, y + i * dy, w, h, cols=(colours[i],), rows=4)


def qkv_heads():
    fig, ax = canvas(5.5)
    unit, th = 1.0, 0.5  # the width of C channels, the height of T tokens
    nh, heads = 4, HEADS
    # top row: x -> c_attn -> qkv
    grid(ax, 0.2, 4.55, unit, th, rows=4)
    note(ax, 0.7, 5.25, "x  (B, T, C)", mono=True, color=INK)
    arrow(ax, (1.25, 4.8), (1.6, 4.8))
    box(ax, 1.62, 4.55, 1.05, th, "c_attn\nC → 3C", size=9)
    arrow(ax, (2.7, 4.8), (3.05, 4.8))
    grid(ax, 3.1, 4.55, 3 * unit, th, cols=heads * 3, rows=4)
    for i in (1, 2):
        line(ax, [3.1 + i * unit] * 2, [4.5, 5.1], color=INK, lw=1.6)
    note(ax, 4.6, 5.25, "qkv  (B, T, 3C)", mono=True, color=INK)
    # split into q, k, v, each cut into nh head slices of hs channels
    centres = (3.3, 4.6, 5.9)
    for i, (name, cx) in enumerate(zip("qkv", centres)):
        arrow(ax, (3.1 + (i + 0.5) * unit, 4.52), (cx, 4.02))
        grid(ax, cx - unit / 2, 3.5, unit, th, cols=heads, rows=4)
        note(ax, cx - unit / 2 - 0.1, 3.75, name, size=SIZE + 1, color=INK, ha="right", style="italic")
        arrow(ax, (cx, 3.45), (cx, 3.02))
        _stack(ax, cx, 2.2, unit / nh, th, heads)
        arrow(ax, (cx, 2.15), (4.6 + (cx - 4.6) * 0.55, 1.72))
    note(ax, 0.2, 3.75, "q, k, v = qkv.split(C, dim=2)\n(B, T, C) each, nh slices of hs",
         mono=True, ha="left", color=INK)
    note(ax, 0.2, 2.55, ".view(B, T, nh, hs)\n.transpose(1, 2)\n(B, nh, T, hs): heads are\na batch dimension",
         mono=True, ha="left", color=INK)
    # attention, every head at once
    box(ax, 2.8, 1.2, 3.6, 0.5, r"softmax(mask($q k^\top / \sqrt{hs}$)) $v$", kind="op", size=SIZE)
    note(ax, 0.2, 1.45, "attention_v1(q, k, v)\nevery head in one call", mono=True, ha="left", color=INK)
    # and back: heads side by side again, then c_proj mixes them
    arrow(ax, (3.3, 1.16), (3.3, 0.98))
    _stack(ax, 3.3, 0.12, unit / nh, th, heads)
    note(ax, 0.2, 0.4, "y.transpose(1, 2)\n .contiguous().view(B, T, C)", mono=True, ha="left", color=INK)
    arrow(ax, (3.75, 0.37), (4.15, 0.37))
    grid(ax, 4.2, 0.12, unit, th, cols=heads, rows=4)
    arrow(ax, (5.25, 0.37), (5.55, 0.37))
    box(ax, 5.6, 0.12, 0.75, th, "c_proj\nC → C", size=9)
    arrow(ax, (6.4, 0.37), (6.9, 0.37))
    note(ax, 6.65, 0.2, "(B, T, C)", mono=True, size=7)
    # the key to the colours
    for i, c in enumerate(heads):
        grid(ax, 5.9 + i * 0.26, 5.15, 0.22, 0.2, cols=(c,))
        note(ax, 6.01 + i * 0.26, 5.25, str(i), size=7.5, color=INK)
    note(ax, 5.83, 5.25, "head", size=SMALL, ha="right")
    return fig


# ---------------------------------------------------------------------------------------------
# 02 transformer block: the residual stream and pre-norm sublayers
# ---------------------------------------------------------------------------------------------

STREAM = "#9dbfe3"  # the residual stream, drawn as one thick line


def plus(ax, x, y, r=0.13):
    from matplotlib.patches import Circle

    fc, ec = KINDS["op"]
    ax.add_patch(Circle((x, y), r, fc=fc, ec=ec, lw=1.3, zorder=3))
    line(ax, [x - r * 0.6, x + r * 0.6], [y, y], color=ec, lw=1.4, zorder=4)
    line(ax, [x, x], [y - r * 0.6, y + r * 0.6], color=ec, lw=1.4, zorder=4)


def _sublayer(ax, sx, cx, y0, boxes, y_add, w=1.5):
    """A branch off the stream at x = sx: right to the column at cx, up through `boxes`, back into a plus."""
    line(ax, [sx, cx], [y0, y0])
    y = y0
    for label, kind, h in boxes:
        arrow(ax, (cx, y), (cx, y + 0.2))
        box(ax, cx - w / 2, y + 0.2, w, h, label, kind=kind, size=9)
        y += 0.2 + h
    line(ax, [cx, cx], [y, y_add])
    arrow(ax, (cx, y_add), (sx + 0.14, y_add))
    plus(ax, sx, y_add)


def residual_stream():
    fig, ax = canvas(4.6)
    # pre-norm, GPT-2: the stream only has things added to it
    sx, cx = 1.1, 2.95
    for x in (sx, 4.85):
        line(ax, [x, x], [0.35, 4.15], color=STREAM, lw=7, zorder=0)
        arrow(ax, (x, 4.05), (x, 4.3), color=KINDS["tensor"][1], head=12)
    note(ax, sx, 0.2, "x  (B, T, C)", mono=True, color=INK)
    note(ax, sx, 4.45, "x  (B, T, C)", mono=True, color=INK)
    ax.text(0.8, 2.2, "the residual stream: nothing on it but additions", rotation=90, ha="center",
            va="center", fontsize=SMALL, color=MUTED)
    _sublayer(ax, sx, cx, 0.6, [("ln_1  LayerNorm", "layer", 0.35), ("attn  causal self-attention", "layer", 0.4)],
              2.0, w=2.0)
    _sublayer(ax, sx, cx, 2.4, [("ln_2  LayerNorm", "layer", 0.35), ("mlp  C → 4C → C", "layer", 0.4)], 3.8, w=2.0)
    note(ax, 1.3, 0.53, "reads a normalised copy", ha="left", va="top", size=7.5)
    note(ax, 1.3, 2.12, "writes an update", ha="left", va="bottom", size=7.5)
    note(ax, 2.95, 4.45, "pre-norm (GPT-2): the Block", size=SIZE, color=INK, weight="bold")
    # post-norm, 2017: a LayerNorm on the stream itself
    sx, cx = 4.85, 6.25
    _sublayer(ax, sx, cx, 0.6, [("attn", "layer", 0.4)], 1.45, w=1.0)
    box(ax, sx - 0.4, 1.75, 0.8, 0.35, "LN_1", edge=ACCENT, lw=1.8, size=9, zorder=3)
    _sublayer(ax, sx, cx, 2.4, [("mlp", "layer", 0.4)], 3.25, w=1.0)
    box(ax, sx - 0.4, 3.55, 0.8, 0.35, "LN_2", edge=ACCENT, lw=1.8, size=9, zorder=3)
    note(ax, 5.55, 4.45, "post-norm (2017), for contrast", size=SIZE, color=INK, weight="bold")
    note(ax, 5.55, 0.2, "a LayerNorm on the stream itself:\nthe gradient must pass through it", size=7.5,
         color=ACCENT)
    return fig


# ---------------------------------------------------------------------------------------------
# 03 GPT model: token ids to logits, wte and lm_head tied
# ---------------------------------------------------------------------------------------------

def gpt_stack():
    from gpt_helpers import GPTConfig

    cfg = GPTConfig()  # GPT-2 124M
    fig, ax = canvas(5.95)
    sx = 3.55  # the stream's x
    line(ax, [sx, sx], [1.85, 4.7], color=STREAM, lw=7, zorder=0)
    # token ids -> two lookups -> their sum starts the stream
    ids = (("15496", "Hello"), ("11", ","), ("314", " I"), ("1101", "'m"))  # GPT-2 BPE
    for i, (tok, text) in enumerate(ids):
        box(ax, 1.35 + i * 0.56, 0.35, 0.52, 0.3, tok, kind="tensor", size=8, mono=True, rounding=0.02)
        note(ax, 1.61 + i * 0.56, 0.18, f'"{text}"', size=7, mono=True)
    note(ax, 1.25, 0.5, "idx  (B, T)", mono=True, color=INK, ha="right")
    arrow(ax, (2.45, 0.68), (2.45, 0.98))
    box(ax, 1.7, 1.0, 1.5, 0.45, "wte  (V, C)\ntoken embedding", size=8.5)
    note(ax, 4.65, 0.5, "pos = arange(T)", mono=True, color=INK)
    arrow(ax, (4.65, 0.65), (4.65, 0.98))
    box(ax, 3.9, 1.0, 1.5, 0.45, "wpe  (block_size, C)\nposition embedding", size=8.5)
    arrow(ax, (2.45, 1.47), (sx - 0.13, 1.82))
    arrow(ax, (4.65, 1.47), (sx + 0.13, 1.82))
    plus(ax, sx, 1.9)
    # the blocks, ln_f, lm_head
    L = cfg.n_layer
    for y, name in ((2.25, "h.0"), (2.8, "h.1"), (3.6, f"h.{L - 1}")):
        box(ax, sx - 1.4, y, 2.8, 0.4, f"{name}   Block: ln_1, attn, ln_2, mlp", size=9)
    note(ax, sx, 3.38, "⋮", size=12, color=INK)
    note(ax, sx + 1.5, 3.2, f"n_layer Blocks\n({L} in GPT-2 124M)", ha="left", size=7.5)
    box(ax, sx - 0.8, 4.2, 1.6, 0.35, "ln_f  LayerNorm", size=9)
    box(ax, sx - 0.8, 4.8, 1.6, 0.4, "lm_head  C → V", size=9, edge=ACCENT, lw=1.8)
    for y0, y1 in ((2.03, 2.23), (2.67, 2.78), (4.02, 4.18), (4.57, 4.78)):
        arrow(ax, (sx, y0), (sx, y1), color=KINDS["tensor"][1])
    arrow(ax, (sx, 5.22), (sx, 5.42), color=KINDS["tensor"][1])
    note(ax, sx, 5.55, "logits  (B, T, V)", mono=True, color=INK)
    for y, shape in ((1.95, "x  (B, T, C)"), (4.1, "(B, T, C)")):
        note(ax, sx + 0.2, y, shape, mono=True, ha="left", size=7.5)
    # the tie: one V x C matrix, used twice
    line(ax, [1.7, 0.85, 0.85, sx - 0.8], [1.22, 1.22, 5.0, 5.0], color=ACCENT, lw=1.6, ls=(0, (4, 3)))
    box(ax, 1.7, 1.0, 1.5, 0.45, edge=ACCENT, fill="none", lw=1.8)
    ax.text(0.68, 3.1, "tied: lm_head.weight is wte.weight, one (V, C) matrix", rotation=90, ha="center",
            va="center", fontsize=SMALL, color=ACCENT)
    # the loss, when targets are given
    arrow(ax, (4.7, 5.55), (5.2, 5.55))
    box(ax, 5.25, 5.35, 1.6, 0.4, "cross_entropy → loss", kind="op", size=8.5)
    note(ax, 6.05, 5.3, "with targets (B, T)", size=7.5, mono=True, va="top")
    note(ax, 0.15, 5.75, f"GPT-2 124M: V = {cfg.vocab_size:,}, C = {cfg.n_embd}, block_size = {cfg.block_size:,}",
         ha="left", size=7.5)
    return fig


# ---------------------------------------------------------------------------------------------
# 04 data loader: the token stream, the shifted targets, the wraparound, the split
# ---------------------------------------------------------------------------------------------

VAL = "#e4d3e6"  # the validation split


def _cells(ax, x0, y, values, w=0.3, h=0.3, fills=None, size=8):
    for i, v in enumerate(values):
        fill = fills[i] if fills else None
        box(ax, x0 + i * w, y, w, h, str(v), kind="tensor", size=size, mono=True, fill=fill, rounding=0.0, lw=0.9)


def _bracket(ax, x0, x1, y, text, color=INK):
    line(ax, [x0, x0, x1, x1], [y - 0.06, y, y, y - 0.06], color=color, lw=1.2)
    note(ax, (x0 + x1) / 2, y + 0.12, text, size=7.5, color=color)


def data_stream():
    fig, ax = canvas(4.75)
    # the split: the last fraction f of the tokens, as one block
    x0, x1, cut = 0.4, 6.6, 0.4 + 0.9 * 6.2
    box(ax, x0, 4.0, cut - x0, 0.32, "train = tokens[0 : N_train]", kind="tensor", size=9, rounding=0.0)
    box(ax, cut, 4.0, x1 - cut, 0.32, "val", kind="tensor", fill=VAL, edge="#8a5f8f", size=9, rounding=0.0)
    note(ax, x0, 4.5, "tokens  (N,): the whole text, encoded once", ha="left", mono=True, color=INK)
    note(ax, x1, 4.5, "tokens[N_train : N], N − N_train = ⌊fN⌋", ha="right", size=7.5)
    note(ax, x1, 3.85, "the last f = 10%, never read by the train loader", ha="right", va="top", size=7.5)
    line(ax, [x0, 0.6], [3.98, 3.45], lw=0.9, ls=(0, (2, 2)))
    line(ax, [cut, 6.6], [3.98, 3.45], lw=0.9, ls=(0, (2, 2)))
    # the loader on one split: 20 tokens that are their own positions, B = 2, T = 4
    w, y = 0.3, 2.55
    fills = [None] * 17 + [KINDS["plain"][0]] * 3
    _cells(ax, 0.6, y, range(20), fills=fills)
    _bracket(ax, 0.6 + 0.03, 0.6 + 9 * w - 0.03, y + 0.4, "batch 0: tokens[0 : 9], B·T + 1 = 9")
    _bracket(ax, 0.6 + 8 * w + 0.03, 0.6 + 17 * w - 0.03, y + 0.62, "batch 1: tokens[8 : 17]")
    note(ax, 0.6 + 18.5 * w, y + 0.45, "never read", size=7.5)
    note(ax, 0.5, y + 0.15, "a split", ha="right", size=7.5)
    for p, label in ((0, "p = 0"), (8, "p = 8"), (16, "p = 16")):
        arrow(ax, (0.6 + (p + 0.5) * w, y - 0.32), (0.6 + (p + 0.5) * w, y - 0.03), color=INK, head=7)
        note(ax, 0.6 + (p + 0.5) * w, y - 0.42, label, size=7.5, mono=True, color=INK)
    arrow(ax, (0.6 + 16.5 * w, y - 0.55), (0.6 + 0.5 * w, y - 0.55), color=ACCENT, rad=-0.1)
    note(ax, 3.6, 1.65, "batch 2 would need tokens[16 : 25]: the position wraps to 0", size=7.5, color=ACCENT)
    # one batch: the inputs and the same buffer shifted by one
    note(ax, 0.4, 0.45, "batch 0", ha="left", size=7.5)
    _grid_of(ax, 1.0, 0.15, [[0, 1, 2, 3], [4, 5, 6, 7]], "x = buf[:-1].view(B, T)")
    _grid_of(ax, 3.1, 0.15, [[1, 2, 3, 4], [5, 6, 7, 8]], "y = buf[1:].view(B, T)")
    arrow(ax, (2.3, 0.45), (3.0, 0.45), color=INK)
    note(ax, 2.65, 0.6, "+1", size=8, color=INK)
    note(ax, 4.5, 0.45, "y[b, t] = x[b, t + 1]: the next token\nthe next batch starts at this one's\n"
         "last target (8): p moves by B·T", ha="left", size=7.5, color=INK)
    return fig


def _grid_of(ax, x0, y0, rows, title, w=0.3):
    for r, values in enumerate(rows):
        _cells(ax, x0, y0 + (len(rows) - 1 - r) * w, values, w=w, h=w)
    note(ax, x0 + len(rows[0]) * w / 2, y0 + len(rows) * w + 0.15, title, mono=True, size=7.5, color=INK)


# ---------------------------------------------------------------------------------------------
# 05 training: one optimizer step
# ---------------------------------------------------------------------------------------------

def optimizer_step():
    from gpt_helpers import PRESETS

    gpu = PRESETS["gpu"]
    K = gpu.grad_accum_steps
    fig, ax = canvas(4.45)
    box(ax, 0.15, 2.85, 0.85, 0.55, "lr_schedule\n(step)", kind="op", size=8.5)
    box(ax, 0.15, 1.15, 0.85, 0.5, "zero_grad()\n.grad = None", kind="op", size=7.5)
    xs = [1.2 + k * 1.02 for k in range(K)]
    grad_prev = (1.0, 1.4)
    for k, x in enumerate(xs, start=1):
        cx = x + 0.44
        note(ax, cx, 4.28, f"micro-batch {k}", size=8.5, color=INK, weight="bold")
        box(ax, x, 3.7, 0.88, 0.3, "x, y  (B, T)", kind="tensor", size=7.5, mono=True)
        arrow(ax, (cx, 3.68), (cx, 3.47))
        box(ax, x, 3.0, 0.88, 0.45, f"forward\n→ loss_{k}", size=8)
        arrow(ax, (cx, 2.98), (cx, 2.77))
        box(ax, x, 2.25, 0.88, 0.5, f"(loss_{k} / K)\n.backward()", kind="op", size=7.5, mono=True)
        arrow(ax, (cx, 2.23), (cx, 1.67))
        sum_label = r"$\sum_{i=1}^{%d} \nabla \frac{L_i}{K}$" % k
        box(ax, x, 1.15, 0.88, 0.5, sum_label, kind="tensor", size=10)
        arrow(ax, grad_prev, (x - 0.02, 1.4))
        grad_prev = (x + 0.9, 1.4)
    note(ax, (xs[0] + xs[-1] + 0.88) / 2, 0.95, ".grad after each backward: PyTorch adds, never overwrites",
         size=7.5, va="top")
    # once per step, on the summed gradient
    x = 5.45
    arrow(ax, grad_prev, (x - 0.02, 1.4))
    box(ax, x, 1.05, 1.45, 0.7, f"clip_grad_norm_, c = {gpu.grad_clip}\n" + r"$g \cdot \min(1, c / \Vert g \Vert)$",
        kind="op", size=8, edge=ACCENT, lw=1.8)
    arrow(ax, (x + 0.72, 1.77), (x + 0.72, 2.2))
    box(ax, x, 2.22, 1.45, 0.75, "optimizer.step()\nAdamW: decay and\nno-decay groups", size=8)
    arrow(ax, (x + 0.72, 2.99), (x + 0.72, 3.35))
    box(ax, x, 3.37, 1.45, 0.4, "new weights θ", kind="tensor", size=8.5)
    note(ax, x + 0.72, 4.28, "once per step", size=8.5, color=INK, weight="bold")
    # the learning rate, set first, used by AdamW
    dash = (0, (3, 2))
    line(ax, [0.58, 0.58, 5.3, 5.3], [3.42, 4.1, 4.1, 2.6], lw=1.1, ls=dash)
    arrow(ax, (5.3, 2.6), (x - 0.02, 2.6), lw=1.1)
    note(ax, 0.66, 3.95, "lr", size=8, color=INK, ha="left")
    note(ax, 3.45, 0.3, f"K = grad_accum_steps micro-batches: {K} in the gpu preset, "
         f"B·T·K = {gpu.batch_size}·{gpu.seq_len}·{K} = {gpu.tokens_per_step:,} tokens per step", size=7.5)
    return fig


# ---------------------------------------------------------------------------------------------
# 06 generation: the KV cache, step by step
# ---------------------------------------------------------------------------------------------

NEW = "#9dbfe3"  # a cache entry written this step
SEEN = "#a9d3a0"  # an attention weight that may be non-zero


def _kv_row(ax, y, n_old, n_new, w=0.28):
    """The cache of one layer after a step: k above v, one column per token."""
    for r, name in enumerate("kv"):
        yy = y + (1 - r) * (w + 0.05)
        note(ax, 3.0, yy + w / 2, name, size=9, color=INK, style="italic", ha="right")
        for i in range(n_old + n_new):
            new = i >= n_old
            box(ax, 3.1 + i * w, yy, w, w, fill=NEW if new else KINDS["tensor"][0], kind="tensor",
                edge=ACCENT if new else None, lw=1.5 if new else 0.9, rounding=0.0)


def _pattern(ax, x0, y_top, n_q, n_k, first_q, w=0.24):
    """Attention weights: n_q query rows (token first_q onwards) over n_k key columns, causal."""
    for r in range(n_q):
        for c in range(n_k):
            box(ax, x0 + c * w, y_top - (r + 1) * w, w, w, kind="plain", rounding=0.0, lw=0.7,
                fill=SEEN if c <= first_q + r else "white")


def kv_cache():
    fig, ax = canvas(4.75)
    for x, text in ((0.15, "step"), (1.5, "fed in: new tokens"), (3.1, "cache after the step, per layer"),
                    (5.3, "attention weights")):
        note(ax, x, 4.5, text, ha="left", size=8.5, color=INK, weight="bold")
    note(ax, 3.1, 4.25, "(B, nh, T, hs) for k and for v", ha="left", size=7.5, mono=True)
    note(ax, 5.3, 4.25, "rows: queries, columns: keys", ha="left", size=7.5)
    rows = ((3.25, "prefill", "the whole prompt,\ncausal mask", 0, 4), (2.05, "decode 1", "one new token,\nno mask", 4, 1),
            (1.05, "decode 2", "one new token", 5, 1))
    for y, name, detail, n_old, n_new in rows:
        note(ax, 0.15, y + 0.42, name, ha="left", size=9, color=INK, weight="bold")
        note(ax, 0.15, y + 0.05, detail, ha="left", size=7.5, va="center")
        for i in range(n_new):
            box(ax, 1.5 + i * 0.28, y + 0.16, 0.28, 0.28, str(n_old + i), kind="tensor", size=8, mono=True,
                rounding=0.0, lw=0.9)
        arrow(ax, (1.58 + n_new * 0.28, y + 0.3), (2.82, y + 0.3))
        _kv_row(ax, y, n_old, n_new)
        note(ax, 3.1 + (n_old + n_new) * 0.28 + 0.08, y + 0.3, f"T = {n_old + n_new}", ha="left", size=7.5,
             mono=True)
        _pattern(ax, 5.3, y + 0.62 if n_new > 1 else y + 0.42, n_new, n_old + n_new, n_old)
    box(ax, 0.15, 0.42, 0.22, 0.22, fill=NEW, kind="tensor", edge=ACCENT, lw=1.5, rounding=0.0)
    note(ax, 0.45, 0.53, "written this step: only the new tokens' k and v are computed, the cached ones are reused",
         ha="left", size=7.5)
    return fig


# ---------------------------------------------------------------------------------------------
# 07 pretrained GPT-2: Conv1D weights are the transpose of nn.Linear's
# ---------------------------------------------------------------------------------------------

ROW = "#f2c48d"  # input channel 0's weights
COL = "#a9d3a0"  # output 0's weights


def _matrix(ax, x, y, w, h, strip_rows, title, rows_label, cols_label):
    """A weight matrix with its first row and first column highlighted (strip_rows: which is which)."""
    from matplotlib.patches import Rectangle

    s = 0.16
    grid(ax, x, y, w, h, kind="layer", edge=KINDS["layer"][1])
    first_row, first_col = (ROW, COL) if strip_rows else (COL, ROW)
    ax.add_patch(Rectangle((x, y + h - s), w, s, fc=first_row, ec="none", alpha=0.9))
    ax.add_patch(Rectangle((x, y), s, h, fc=first_col, ec="none", alpha=0.9))
    ax.add_patch(Rectangle((x, y), w, h, fc="none", ec=KINDS["layer"][1], lw=1.2))
    note(ax, x + w / 2, y + h + 0.42, title, size=9, color=INK, weight="bold")
    note(ax, x + w / 2, y + h + 0.15, cols_label, size=8, mono=True)
    note(ax, x - 0.1, y + h / 2, rows_label, size=8, mono=True, ha="right")


def conv1d_transpose():
    from gpt_helpers import GPTConfig

    C = GPTConfig().n_embd
    fig, ax = canvas(4.75)
    _matrix(ax, 0.75, 3.3, 2.4, 0.8, True, "HF Conv1D: weight (in, out)", "in = C", "out = 3C")
    note(ax, 1.95, 3.05, "y = x @ W + b", size=8.5, mono=True, color=INK)
    arrow(ax, (3.45, 3.7), (4.35, 3.7), color=ACCENT, lw=1.8, head=12)
    note(ax, 3.9, 3.9, ".t()", size=10, mono=True, color=ACCENT)
    _matrix(ax, 5.4, 1.78, 0.8, 2.4, False, "nn.Linear: weight (out, in)", "out = 3C", "in = C")
    note(ax, 5.8, 1.55, "y = x @ W.T + b", size=8.5, mono=True, color=INK)
    for y, colour, text in ((2.55, ROW, "input channel 0's weights: a row, then a column"),
                            (2.25, COL, "output 0's weights: a column, then a row")):
        box(ax, 0.75, y - 0.08, 0.16, 0.16, fill=colour, edge="none", rounding=0.0)
        note(ax, 1.0, y, text, size=7.5, ha="left")
    # the four Conv1D weights of every block
    rows = (("attn.c_attn.weight", "(C, 3C)", "(3C, C)", (C, 3 * C)), ("attn.c_proj.weight", "(C, C)", "(C, C)", (C, C)),
            ("mlp.c_fc.weight", "(C, 4C)", "(4C, C)", (C, 4 * C)), ("mlp.c_proj.weight", "(4C, C)", "(C, 4C)", (4 * C, C)))
    cols = (0.2, 2.15, 3.3, 4.45)
    for x, head in zip(cols, ("in each block h.N", "HF (in, out)", "ours (out, in)", f"GPT-2 124M, C = {C}")):
        note(ax, x, 1.25, head, size=8, color=INK, weight="bold", ha="left")
    for i, (name, hf, ours, shape) in enumerate(rows):
        colour = ACCENT if shape[0] == shape[1] else INK
        for x, text in zip(cols, (name, hf, ours, f"{shape} → {shape[::-1]}")):
            note(ax, x, 1.0 - i * 0.22, text, size=8, mono=True, ha="left", color=colour)
    note(ax, 0.2, 0.1, "attn.c_proj is square: without its .t() it still loads and passes every shape check. "
         "Everything else copies as is.", size=7.5, ha="left", color=ACCENT)
    return fig


# ---------------------------------------------------------------------------------------------
# 08 performance: where a training step's FLOPs go
# ---------------------------------------------------------------------------------------------

OPTIMIZER_FLOPS_PER_PARAM = 15  # clipping (square, sum, scale) and AdamW's moments, sqrt, divide, decay: a rough count


def step_flops(cfg) -> list[tuple[str, str, int]]:
    """A training step's FLOPs by part, forward and backward (3x forward) together, as
    (part, colour, FLOPs), by the 6N + 12LCT rule of notebook 08; the optimizer last."""
    from gpt_helpers import flops_params, flops_per_token

    m, T = cfg.model, cfg.seq_len
    C, L, V = m.n_embd, m.n_layer, m.vocab_size
    tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum_steps
    per_token = [  # 6 FLOPs per parameter per token; embedding lookups multiply nothing
        ("embeddings (wte, wpe lookups)", KINDS["plain"][1], 0),
        ("attention: c_attn, c_proj", "#f2c48d", 6 * L * (4 * C * C + 4 * C)),
        ("attention: q·k and att·v (12LCT)", "#d99a5b", 12 * L * C * T),
        ("MLP: c_fc, c_proj", "#a9d3a0", 6 * L * (8 * C * C + 5 * C)),
        ("LayerNorms", "#c9ced4", 6 * (4 * C * L + 2 * C)),
        ("lm_head (V·C) + loss", "#7fa9d6", 6 * V * C),
    ]
    assert sum(f for *_, f in per_token) == flops_per_token(m, T)
    params = flops_params(m) + m.block_size * C  # every parameter, wpe included
    return [(n, c, f * tokens) for n, c, f in per_token] + [
        ("clip + AdamW (once per step)", "#d3b3d6", OPTIMIZER_FLOPS_PER_PARAM * params)]


def _step_bar(ax, parts, x0, y, width, h=0.42):
    """One step as a bar: the forward parts in order, the backward ones reversed at twice the width,
    then the optimizer. Returns where forward, backward and the optimizer start and end."""
    from matplotlib.patches import Rectangle

    total = sum(f for *_, f in parts)
    model, opt = parts[:-1], parts[-1]
    pieces = [(c, f / 3) for _, c, f in model] + [(c, 2 * f / 3) for _, c, f in reversed(model)] + [(opt[1], opt[2])]
    x, edges = x0, [x0]
    for i, (colour, f) in enumerate(pieces):
        w = width * f / total
        ax.add_patch(Rectangle((x, y), w, h, fc=colour, ec="white", lw=0.5))
        x += w
        if i in (len(model) - 1, 2 * len(model) - 1):
            edges.append(x)
    edges.append(x)
    ax.add_patch(Rectangle((x0, y), width, h, fc="none", ec=INK, lw=1.0))
    return edges


def flops_breakdown():
    from gpt_helpers import PRESETS

    cpu, gpu = PRESETS["cpu"], PRESETS["gpu"]
    parts, big = step_flops(cpu), step_flops(gpu)
    total, big_total = sum(f for *_, f in parts), sum(f for *_, f in big)
    m = cpu.model
    fig, ax = canvas(4.75)
    note(ax, 0.2, 4.55, "One training step at the cpu preset, by FLOPs (not measured time)", ha="left", size=9.5,
         color=INK, weight="bold")
    note(ax, 0.2, 4.3, f"C = {m.n_embd}, L = {m.n_layer}, V = {m.vocab_size:,}, T = {cpu.seq_len}, "
         f"{cpu.tokens_per_step:,} tokens a step; FLOPs by the 6N + 12LCT rule of section 2", ha="left", size=8)
    x0, width, y = 0.2, 6.55, 3.2
    edges = _step_bar(ax, parts, x0, y, width)
    for (a, b), text in zip(zip(edges, edges[1:]), ("forward", "backward: the same parts in reverse, 2x the FLOPs")):
        _bracket(ax, a + 0.02, b - 0.02, y + 0.55, f"{text}  {(b - a) / width:.0%}")
    for a, b in zip(edges, edges[1:3]):
        note(ax, (a + b) / 2, y + 0.21, "lm_head + loss", size=8, color=INK)
    arrow(ax, (x0 + 0.35, y - 0.32), (x0 + 0.08, y - 0.03), head=7)
    note(ax, x0 + 0.38, y - 0.36, "embeddings, attention, MLP", ha="left", size=7.5)
    arrow(ax, (edges[-1] - 0.3, y - 0.32), (edges[-1] - 0.01, y - 0.03), head=7)
    note(ax, edges[-1] - 0.33, y - 0.36, f"clip + AdamW  {parts[-1][2] / total:.1%}", ha="right", size=7.5)
    # each part's share, here and in GPT-2 124M
    cols, scale = (3.55, 5.4), 1.15
    note(ax, cols[0], 2.55, "cpu preset", ha="left", size=8, color=INK, weight="bold")
    note(ax, cols[1], 2.55, "gpu: GPT-2 124M", ha="left", size=8, color=MUTED, weight="bold")
    for i, ((name, colour, f), (_, _, g)) in enumerate(zip(parts, big)):
        yy = 2.22 - i * 0.28
        box(ax, 0.2, yy - 0.08, 0.16, 0.16, fill=colour, edge="none", rounding=0.0)
        note(ax, 0.45, yy, name, ha="left", size=8, color=INK)
        for x, share, fill in ((cols[0], f / total, colour), (cols[1], g / big_total, KINDS["plain"][0])):
            box(ax, x, yy - 0.09, max(scale * share, 0.004), 0.18, fill=fill, edge=KINDS["plain"][1], lw=0.6,
                rounding=0.0)
            note(ax, x + scale * share + 0.05, yy, f"{share:.1%}", ha="left", size=7.5, mono=True)
    note(ax, 0.2, 0.2, "Elementwise work (softmax, GELU, LayerNorm, AdamW) is cheap in FLOPs but not in memory "
         "traffic,\nso its share of the time is larger than its share here: section 9 measures the time.",
         ha="left", size=7.5)
    return fig


# ---------------------------------------------------------------------------------------------
# Where each diagram goes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Diagram:
    notebook: str  # file name under the notebooks folder
    cell_id: str  # the markdown cell that holds it: stable, so `embed` finds it again
    name: str  # the attachment's file name
    draw: Callable  # returns a matplotlib Figure
    anchor: str  # text found in exactly one markdown cell: the diagram goes right after it
    alt: str  # what the picture shows, for a reader who cannot see it
    caption: str  # one sentence: what to look at

    def png(self) -> bytes:
        return draw(self.draw)

    def source(self) -> str:
        return f"![{self.alt}](attachment:{self.name})\n\n*{self.caption}*"


DIAGRAMS = (
    Diagram("01_attention.ipynb", "diagram-qkv-heads", "qkv-heads.png", qkv_heads,
            "## 7. All heads from one matrix: `c_attn`",
            "c_attn maps x (B, T, C) to qkv (B, T, 3C), which splits into q, k and v; each is viewed as "
            "(B, T, nh, hs) and transposed to (B, nh, T, hs), attention runs on every head at once, and the heads "
            "are laid side by side again as (B, T, C) before c_proj",
            "Follow one colour, one head: its hs channels are cut out of q, k and v, become one card of a "
            "(B, nh, T, hs) batch, and land back in the same channels of the (B, T, C) output that `c_proj` mixes."),
    Diagram("02_transformer_block.ipynb", "diagram-residual-stream", "residual-stream.png", residual_stream,
            "## 5. The Block",
            "A pre-norm GPT-2 block: the residual stream x runs straight up, ln_1 and attn read a copy of it and "
            "add their output back, then ln_2 and mlp do the same; beside it a post-norm block, with a LayerNorm "
            "on the stream after each addition",
            "In the GPT-2 block (left) the stream runs from bottom to top with nothing on it but two additions, "
            "a direct path for the gradient; post-norm (right) puts a LayerNorm on that path."),
    Diagram("03_gpt_model.ipynb", "diagram-gpt-stack", "gpt-stack.png", gpt_stack,
            "## 2. Blocks, `ln_f` and the output layer",
            "GPT-2 from token ids to logits: idx (B, T) goes through the wte and wpe lookups, their sum through "
            "n_layer Blocks h.0 to h.11 at (B, T, C), then ln_f and lm_head give logits (B, T, V) and, with "
            "targets, the loss; a dashed line marks wte and lm_head as one tied matrix",
            "Read it bottom to top: two lookups start the (B, T, C) stream, `n_layer` Blocks keep its shape, "
            "`ln_f` and `lm_head` turn every position into V logits, and the dashed line is section 3's tie: "
            "one (V, C) matrix at both ends."),
    Diagram("04_data_loader.ipynb", "diagram-token-stream", "token-stream.png", data_stream,
            "## 5. The train/val split",
            "The token stream split into train, the first 90%, and val, the last 10%; on 20 tokens with B = 2 and "
            "T = 4, batch 0 reads tokens 0 to 8, batch 1 tokens 8 to 16, then the position wraps to 0 and tokens "
            "17 to 19 are never read; batch 0's x holds tokens 0 to 7 and its y tokens 1 to 8",
            "Each batch reads B·T + 1 consecutive tokens of its own split, and its targets are its inputs "
            "shifted by one: look at token 8, batch 0's last target and batch 1's first input, and at the tail "
            "the wraparound skips."),
    Diagram("05_training.ipynb", "diagram-optimizer-step", "optimizer-step.png", optimizer_step,
            "## 7. One training step, and the loop around it",
            "One optimizer step: lr_schedule(step) sets the learning rate and the gradients are zeroed; K "
            "micro-batches each run forward and backward on loss / K, adding into .grad; the summed gradient is "
            "clipped and AdamW updates the weights once",
            "The K micro-batches only add into `.grad`; clipping and AdamW run once per step, on the sum, "
            "with the learning rate set before the first micro-batch."),
    Diagram("06_generation.ipynb", "diagram-kv-cache", "kv-cache.png", kv_cache,
            "Attention with the cache, using the model's own weights",
            "The KV cache over three steps: the prefill feeds tokens 0 to 3 and writes four keys and values under "
            "a causal mask; each decode step feeds one token, appends one key and one value, and its one query "
            "attends to every cached key",
            "Each step appends one column to every layer's cache and computes q, k and v for the new token "
            "only; its single query row sees every cached key, so decoding needs no mask."),
    Diagram("07_pretrained_gpt2.ipynb", "diagram-conv1d-transpose", "conv1d-transpose.png", conv1d_transpose,
            "So porting is a loop",
            "HF's Conv1D stores c_attn's weight as (in, out) = (C, 3C) and computes x @ W + b; nn.Linear stores "
            "(out, in) = (3C, C) and computes x @ W.T + b; .t() turns one into the other. A table lists the four "
            "transposed weights of every block; attn.c_proj is square",
            "The same numbers, transposed: one input channel's weights are a row of the Conv1D weight and a "
            "column of the Linear one, and the square `attn.c_proj` is the weight whose missing `.t()` no shape "
            "check notices."),
    Diagram("08_performance.ipynb", "diagram-step-flops", "step-flops.png", flops_breakdown,
            "## 2. FLOPs per token and MFU",
            "One training step at the cpu preset as a bar of FLOPs: the forward pass a third, the backward pass "
            "two thirds, clipping and AdamW about 0.2%; lm_head and the loss take about 94% of it, against 30% "
            "in GPT-2 124M",
            "At the cpu preset `lm_head` and the loss take about 94% of a step's FLOPs and the blocks about 6%, "
            "where in GPT-2 124M the head takes 30%; these are FLOPs counted by the formula above, not "
            "measured time."),
)


# ---------------------------------------------------------------------------------------------
# Into the notebooks
# ---------------------------------------------------------------------------------------------

def anchor_index(nb, anchor: str, name: str) -> int:
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and anchor in c.source
             and not c.get("id", "").startswith("diagram-")]
    if len(found) != 1:
        raise SystemExit(f"{name}: the anchor {anchor!r} is in {len(found)} markdown cells, not 1: "
                         "change the anchor in scripts/diagrams.py (DIAGRAMS)")
    return found[0]


FORMS = ("attachment", "output")


def diagram_cells(diagram: Diagram, png: bytes, form: str) -> list:
    """The cells that show a diagram. "attachment": one markdown cell holding the PNG. "output": a code
    cell whose saved output is the PNG (it calls `show`, so a re-run draws the same bytes), then a
    markdown cell with the caption."""
    data = base64.b64encode(png).decode("ascii")
    if form == "attachment":
        return [nbformat.v4.new_markdown_cell(diagram.source(), id=diagram.cell_id,
                                              attachments={diagram.name: {"image/png": data}})]
    code = nbformat.v4.new_code_cell(
        f"from scripts.diagrams import show  # the course's diagrams, drawn by scripts/diagrams.py\n"
        f"show({diagram.name!r})", id=diagram.cell_id,
        outputs=[nbformat.v4.new_output("display_data", data={"image/png": data, "text/plain": diagram.alt})])
    return [code, nbformat.v4.new_markdown_cell(f"*{diagram.caption}*", id=f"{diagram.cell_id}-caption")]


def show(name: str):
    """Display a diagram in a running notebook: what the code cell of `embed --as output` calls."""
    from IPython.display import display

    diagram = next(d for d in DIAGRAMS if d.name == name)
    display({"image/png": base64.b64encode(diagram.png()).decode("ascii"), "text/plain": diagram.alt}, raw=True)


def _content(cell):
    outputs = [o.get("data") for o in cell.get("outputs", [])]
    return cell.cell_type, cell.source, cell.get("attachments"), outputs


def embed(nb, diagram: Diagram, png: bytes, form: str = "attachment") -> bool:
    """Put the diagram into its cells: where they already are, else right after the anchor.
    Returns whether the notebook changed."""
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        raise SystemExit(f"{diagram.notebook}: nbformat {nb.nbformat}.{nb.nbformat_minor} has no cell ids; "
                         "save it as 4.5 or later")
    new = diagram_cells(diagram, png, form)
    old = [i for i, c in enumerate(nb.cells) if c.get("id") in (diagram.cell_id, f"{diagram.cell_id}-caption")]
    if [_content(nb.cells[i]) for i in old] == [_content(c) for c in new]:
        return False
    at = old[0] if old else anchor_index(nb, diagram.anchor, diagram.notebook) + 1
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    nb.cells = [c for i, c in enumerate(nb.cells) if i not in old]
    nb.cells[at:at] = new
    if counts == list(range(1, len(counts) + 1)):  # executed in order: number the cells as a fresh run would
        _renumber(nb)
    return True


def _renumber(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    for n, cell in enumerate(code, start=1):
        cell.execution_count = n
        for out in cell.outputs:
            if out.output_type == "execute_result":
                out.execution_count = n


def embed_all(folder: Path, form: str = "attachment") -> list[str]:
    done = []
    for notebook in sorted({d.notebook for d in DIAGRAMS}):
        path = folder / notebook
        nb = nbformat.read(path, as_version=4)
        changed = [embed(nb, d, d.png(), form) for d in DIAGRAMS if d.notebook == notebook]
        if any(changed):
            nbformat.write(nb, path)
            done.append(notebook)
    return done


# ---------------------------------------------------------------------------------------------
# Checks: every image a notebook shows is inside the notebook
# ---------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_TYPES = ("image/png", "image/svg+xml")
# The one outside image allowed: the Open-in-Colab badge under a notebook's title. It is a link:
# offline its image shows as its alt text, and the link it sits in needs the network anyway.
COLAB_BADGE = re.compile(r"\[!\[[^\]\n]+\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                         r"\(https://colab\.research\.google\.com/[^)\s]+\)")
_CODE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$|`[^`\n]+`", re.M | re.S)  # fenced blocks, code spans
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_MD_REF_IMAGE = re.compile(r"!\[([^\]]*)\]\[([^\]]*)\]")
_MD_REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*<?([^\s>]+)>?", re.M)
_HTML_IMAGE = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))", re.I)
_SVG_OUTSIDE = re.compile(r"\b(?:xlink:)?href\s*=\s*[\"'](?!#|data:)", re.I)


def image_refs(text: str) -> list[str]:
    """The sources of the images a markdown or HTML text shows, code spans and blocks left out."""
    text = _CODE.sub("", text)
    refs = [m.group(1).strip("<>") for m in _MD_IMAGE.finditer(text)]
    defs = {label.strip().lower(): url for label, url in _MD_REF_DEF.findall(text)}
    refs += [defs[(ref or alt).strip().lower()] for alt, ref in _MD_REF_IMAGE.findall(text)
             if (ref or alt).strip().lower() in defs]
    refs += [next(g for g in m.groups() if g is not None) for m in _HTML_IMAGE.finditer(text)]
    return refs


def image_data_problem(mime: str, data: bytes) -> str | None:
    """Why `data` is not a usable image of type `mime`, or None."""
    if mime == "image/png":
        ok = (data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
              and int.from_bytes(data[16:20], "big") > 0 and int.from_bytes(data[20:24], "big") > 0)
        return None if ok else "is not a whole PNG"
    if mime == "image/svg+xml":
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            return "is not well-formed SVG"
        if not root.tag.endswith("svg"):
            return "is XML but not SVG"
        return "loads a file from outside itself" if _SVG_OUTSIDE.search(data.decode("utf-8", "replace")) else None
    return f"is {mime}: use {' or '.join(IMAGE_TYPES)}"


def _decode(value, mime: str) -> bytes:
    text = "".join(value) if isinstance(value, list) else value
    if mime == "image/svg+xml" and text.lstrip().startswith("<"):
        return text.encode("utf-8")
    return base64.b64decode("".join(text.split()), validate=True)


def _data_uri_problem(uri: str) -> str | None:
    from urllib.parse import unquote_to_bytes

    header, sep, payload = uri[len("data:"):].partition(",")
    mime = header.split(";")[0].lower()
    if not sep:
        return "is a data: URI without data"
    try:
        data = base64.b64decode(payload, validate=True) if ";base64" in header.lower() else unquote_to_bytes(payload)
    except binascii.Error:
        return "is a data: URI whose base64 does not decode"
    return image_data_problem(mime, data)


def _attachment_problems(cell, where: str) -> list[str]:
    found, refs = [], image_refs(cell.source)
    for name, bundle in (cell.get("attachments") or {}).items():
        if f"attachment:{name}" not in refs:
            found.append(f"{where}: attachment {name!r} is not shown by the cell (reference it as "
                         f"![alt](attachment:{name}) or delete it)")
        for mime, value in bundle.items():
            try:
                problem = image_data_problem(mime, _decode(value, mime))
            except (binascii.Error, ValueError):
                problem = "is not valid base64"
            if problem:
                found.append(f"{where}: attachment {name!r} ({mime}) {problem}")
    return found


def _ref_problem(ref: str, cell) -> str | None:
    if ref.startswith("attachment:"):
        name = ref[len("attachment:"):]
        bundle = (cell.get("attachments") or {}).get(name)
        if not bundle:
            return f"shows attachment:{name}, which the cell does not have (run `python scripts/diagrams.py embed`)"
        return None if any(m in IMAGE_TYPES for m in bundle) else f"attachment {name!r} holds no PNG or SVG"
    if ref.startswith("data:"):
        problem = _data_uri_problem(ref)
        return f"has a data: image that {problem}" if problem else None
    return (f"shows {ref!r}, which is not inside the notebook: GitHub and Colab cannot load a relative path, and "
            "a remote image needs the network; use a cell attachment, a data: URI or inline SVG")


def _output_problems(cell, where: str) -> tuple[list[str], bool]:
    """An output may show only data: images; a diagram-* code cell must show a whole PNG.
    Returns the problems and whether the cell is a diagram."""
    found, diagram = [], False
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        for mime in ("text/html", "text/markdown"):
            value = data.get(mime, "")
            for ref in image_refs("".join(value) if isinstance(value, list) else value):
                problem = _data_uri_problem(ref) if ref.startswith("data:") else "is not inside the notebook"
                if problem:
                    found.append(f"{where}: an output shows an image that {problem} ({ref[:60]!r})")
        if cell.get("id", "").startswith("diagram-") and "image/png" in data:
            try:
                problem = image_data_problem("image/png", _decode(data["image/png"], "image/png"))
            except (binascii.Error, ValueError):
                problem = "is not valid base64"
            found += [f"{where}: the diagram's output {problem}"] if problem else []
            diagram = diagram or not problem
    return found, diagram


def image_problems(nb, name: str, lesson: bool = False) -> list[str]:
    """What tests/test_notebook_images.py rejects: an image that the notebook file alone cannot show,
    an attachment nothing shows, and (for a lesson) no diagram at all."""
    found, diagrams = [], 0
    for i, cell in enumerate(nb.cells):
        where = f"{name}: cell {i}"
        if cell.cell_type == "markdown":
            text = COLAB_BADGE.sub("", cell.source) if i == 0 else cell.source
            refs = image_refs(text)
            found += [f"{where} {p}" for p in (_ref_problem(r, cell) for r in refs) if p]
            found += _attachment_problems(cell, where)
            diagrams += any(r.startswith("attachment:") and not _ref_problem(r, cell) for r in refs)
        elif cell.cell_type == "code":
            problems, diagram = _output_problems(cell, where)
            found, diagrams = found + problems, diagrams + diagram
    if lesson and not diagrams:
        found.append(f"{name}: no diagram (a markdown cell showing an image attachment, or a diagram-* code cell "
                     "whose output is one); see scripts/diagrams.py")
    return found


def notebook_paths(folder: Path) -> list[tuple[Path, bool]]:
    """Every notebook under `folder` (solutions too), and whether it is a lesson (NN_name.ipynb at the top)."""
    paths = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    return [(p, p.parent == folder and re.fullmatch(r"\d\d_.+\.ipynb", p.name) is not None) for p in paths]


def _saved_png(cell, diagram: Diagram) -> bytes:
    """The PNG a diagram's cell holds, as an attachment or as its output."""
    bundles = [(cell.get("attachments") or {}).get(diagram.name, {})] + [o.get("data", {}) for o in cell.get("outputs", [])]
    return next((_decode(b["image/png"], "image/png") for b in bundles if "image/png" in b), b"")


def check(folder: Path, stale: bool = False) -> list[str]:
    found = []
    for path, lesson in notebook_paths(folder):
        nb = nbformat.read(path, as_version=4)
        found += image_problems(nb, path.name, lesson)
        cells = {c.get("id"): c for c in nb.cells}
        for d in (d for d in DIAGRAMS if d.notebook == path.name):
            cell = cells.get(d.cell_id)
            if cell is None:
                found.append(f"{path.name}: no cell {d.cell_id!r} (run `python scripts/diagrams.py embed`)")
            elif stale and _saved_png(cell, d) != d.png():
                found.append(f"{path.name}: {d.name} differs from what scripts/diagrams.py draws now")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["render", "embed", "check"])
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS, help="where the notebooks are (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "diagrams", help="render: the folder for the PNGs")
    parser.add_argument("--stale", action="store_true", help="check: also report diagrams that differ from a fresh drawing")
    parser.add_argument("--as", dest="form", choices=FORMS, default="attachment",
                        help="embed: a markdown cell attachment, or a code cell's output (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "render":
        args.out.mkdir(parents=True, exist_ok=True)
        for d in DIAGRAMS:
            (args.out / d.name).write_bytes(d.png())
            print(f"wrote {args.out / d.name}")
    elif args.command == "embed":
        changed = embed_all(args.notebooks_dir, args.form)
        print("\n".join(f"embedded into {n}" for n in changed) or "every diagram is up to date")
    else:
        found = check(args.notebooks_dir, args.stale)
        print("\n".join(found) or "every image is inside its notebook, and every lesson has its diagram")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
