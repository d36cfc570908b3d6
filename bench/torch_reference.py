#!/usr/bin/env python3
"""PyTorch reference of fedslice's GMML pretraining step, for the speed ratio
Rust/PyTorch on the same machine (DESIGN.md §9).

The architecture mirrors the Rust model (DESIGN.md §4) so that both sides do
the same arithmetic: a one-channel ViT in timm's layout plus the GMML
reconstruction head, L1 loss over masked pixels, per-parameter gradient
clipping and AdamW. Only the training step is timed (forward, loss, backward,
clipping, optimizer step); inputs and masks are generated beforehand so data
preparation does not blur the comparison.

Prints exactly one JSON line on stdout. Exits with code 3 when torch is not
importable, so a benchmark driver can tell "no reference available" apart
from a crash.
"""

import argparse
import json
import math
import sys
import time

PRESETS = {
    # name: (img, patch, dim, depth, heads)
    "test": (64, 8, 64, 2, 2),
    "vit-tiny": (224, 16, 192, 12, 3),
    "vit-small": (224, 16, 384, 12, 6),
}

CLIP_NORM = 3.0
WEIGHT_DECAY = 0.04
BASE_LR = 5e-4  # scaled by batch/256, as in DINO/GMML


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="test")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--attention",
        choices=["sdpa", "explicit"],
        default="sdpa",
        help="sdpa: F.scaled_dot_product_attention (what timm uses); "
        "explicit: softmax(q k^T / sqrt(d)) v written out, like a naive port",
    )
    args = ap.parse_args(argv)
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.warmup < 0 or args.threads < 0:
        ap.error("--warmup and --threads must not be negative")
    return args


def expected_params(img, patch, dim, depth):
    """Closed-form parameter count of the architecture, so a mismatch with
    the Rust model (or a silent change here) is caught by numbers alone."""
    n = (img // patch) ** 2
    embed = patch * patch * dim + dim + dim + (n + 1) * dim
    block = 2 * (2 * dim) + (3 * dim * dim + 3 * dim) + (dim * dim + dim)
    block += (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim)
    encoder = embed + depth * block + 2 * dim
    head = 3 * (dim * dim + dim) + dim * patch * patch + patch * patch
    return encoder, head


def build(torch, img, patch, dim, depth, heads, attention):
    nn = torch.nn
    F = torch.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim, bias=True)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, t, _ = x.shape
            qkv = self.qkv(x).reshape(b, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            if attention == "sdpa":
                x = F.scaled_dot_product_attention(q, k, v)
            else:
                attn = (q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5
                x = attn.softmax(dim=-1) @ v
            return self.proj(x.transpose(1, 2).reshape(b, t, dim))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention()
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(
                nn.Linear(dim, 4 * dim), nn.GELU(approximate="none"), nn.Linear(4 * dim, dim)
            )

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class GmmlViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.grid = img // patch
            n = self.grid * self.grid
            self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            layers = []
            for _ in range(3):
                layers += [nn.Linear(dim, dim), nn.GELU(approximate="none")]
            layers.append(nn.Linear(dim, patch * patch))
            self.head = nn.Sequential(*layers)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

        def encoder_params(self):
            return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("head."))

        def forward(self, x):
            b = x.shape[0]
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(x)
            # Reconstruction from the patch tokens of the last block (not an
            # average of several blocks): token i -> its p x p pixels.
            y = self.head(x[:, 1:])
            g = self.grid
            y = y.reshape(b, g, g, patch, patch).permute(0, 1, 3, 2, 4)
            return y.reshape(b, 1, g * patch, g * patch)

    return GmmlViT()


def rect_mask(torch, gen, img, fraction=0.6, max_side=0.3):
    """Union of random rectangles until `fraction` of the image is covered
    (each side uniform in [1, max_side*img), top-left uniform), as in GMML."""
    mask = torch.zeros(img, img)
    hi = max(2, int(max_side * img))
    while mask.mean().item() < fraction:
        h, w = (int(v) for v in torch.randint(1, hi, (2,), generator=gen))
        top = int(torch.randint(0, img - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, img - w + 1, (1,), generator=gen))
        mask[top : top + h, left : left + w] = 1.0
    return mask


def make_batch(torch, gen, batch, img):
    clean = torch.randn(batch, 1, img, img, generator=gen)
    mask = torch.stack([rect_mask(torch, gen, img) for _ in range(batch)]).unsqueeze(1)
    noise = torch.randn(batch, 1, img, img, generator=gen)
    corrupted = clean * (1 - mask) + noise * mask
    return corrupted, clean, mask


def param_groups(model):
    """No weight decay on biases and norm weights (DINO's get_params_groups)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_per_parameter(params, clip):
    """DINO's clip_gradients: each parameter's gradient is scaled down to norm
    `clip` on its own (not one global norm); done without .item() syncs."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_((clip / (p.grad.norm(2) + 1e-6)).clamp(max=1.0))


def main(argv):
    args = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        print(
            f"torch_reference.py: PyTorch is not importable ({e}). Install it, e.g. "
            "`python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch` "
            "(see bench/README.md), and run the script with that interpreter.",
            file=sys.stderr,
        )
        return 3

    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already fixed by an earlier parallel op; harmless here
    torch.manual_seed(args.seed)
    img, patch, dim, depth, heads = PRESETS[args.preset]
    model = build(torch, img, patch, dim, depth, heads, args.attention)
    model.train()

    params = sum(p.numel() for p in model.parameters())
    enc_expected, head_expected = expected_params(img, patch, dim, depth)
    if params != enc_expected + head_expected or model.encoder_params() != enc_expected:
        print(
            f"torch_reference.py: parameter count {params} differs from the closed form "
            f"{enc_expected + head_expected}; the model definition drifted",
            file=sys.stderr,
        )
        return 1
    check_timm(img, patch, dim, depth, heads, enc_expected)

    lr = BASE_LR * args.batch / 256
    opt = torch.optim.AdamW(param_groups(model), lr=lr, weight_decay=WEIGHT_DECAY)
    trainable = [p for p in model.parameters() if p.requires_grad]

    gen = torch.Generator().manual_seed(args.seed)
    batches = [make_batch(torch, gen, args.batch, img) for _ in range(args.warmup + args.steps)]

    times = []
    loss_value = float("nan")
    for i, (corrupted, clean, mask) in enumerate(batches):
        t0 = time.perf_counter()
        recon = model(corrupted)
        loss = ((recon - clean).abs() * mask).sum() / mask.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_per_parameter(trainable, CLIP_NORM)
        opt.step()
        loss_value = loss.item()  # forces completion, part of a real step's logging
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt * 1e3)
    if not math.isfinite(loss_value):
        print(f"torch_reference.py: loss is {loss_value}", file=sys.stderr)
        return 1

    print(
        json.dumps(
            {
                "framework": "pytorch",
                "torch_version": torch.__version__,
                "preset": args.preset,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "step_ms_mean": round(sum(times) / len(times), 3),
                "step_ms_min": round(min(times), 3),
                "steps": len(times),
                "params": params,
                "params_encoder": enc_expected,
                "attention": args.attention,
                "final_loss": round(loss_value, 6),
            }
        )
    )
    return 0


def check_timm(img, patch, dim, depth, heads, enc_expected):
    """Optional cross-check of the encoder against timm's ViT, if installed."""
    try:
        from functools import partial

        import torch.nn as nn
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return
    ref = VisionTransformer(
        img_size=img,
        patch_size=patch,
        in_chans=1,
        num_classes=0,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    n = sum(p.numel() for p in ref.parameters())
    if n != enc_expected:
        print(
            f"torch_reference.py: warning: timm ViT has {n} parameters, this encoder "
            f"{enc_expected}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
