"""ViT-Ti / DeiT-Ti (Touvron et al. 2021): a tiny pre-norm vision transformer.

Embedding width 192, 12 blocks, 3 heads of 64, MLP hidden width 4 * 192 with GELU, a class
token and learned position embeddings, LayerNorm before attention, before the MLP and at the
end; the head reads the class token. No dropout and no stochastic depth. Every weight matrix
is an ``nn.Linear`` (attention included) or the ``nn.Conv2d`` patch embedding, so compression
finds them all; the class token and the position embeddings are plain parameters.

Patch-size rule (:func:`patch_size_for`): 16 for images of at least 128 pixels (224 -> 14x14
tokens, the DeiT setting); for smaller images the largest of 8, 4, 2, 1 that leaves a grid of
at least 7x7 tokens, e.g. 4 for 28 px (7x7) and 32 px (8x8), 8 for 64 px (8x8), 1 for 8 px
(8x8). Pixels left over when the side is not a multiple of the patch (the last
``image_size % patch`` rows and columns) are not seen, as with any strided convolution.
At 224 px with 3 channels and 1000 classes the network has DeiT-Ti's 5,717,416 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 192
DEPTH = 12
HEADS = 3
MLP_RATIO = 4
LARGE_IMAGE = 128
MIN_GRID = 7
INIT_STD = 0.02


def patch_size_for(image_size: int) -> int:
    """The patch side used for square images of side ``image_size`` (see the module doc)."""
    if image_size >= LARGE_IMAGE:
        return 16
    for patch in (8, 4, 2):
        if image_size // patch >= MIN_GRID:
            return patch
    return 1


class PatchEmbedding(nn.Module):
    """(N, C, H, W) -> (N, (H // patch) * (W // patch), dim), patches in row-major order."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention, (N, T, dim) -> (N, T, dim), with Linear qkv and output."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, dim = x.shape
        # (N, T, 3 * dim) -> three (N, heads, T, dim // heads) tensors
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head dim)) v
        return self.proj(out.transpose(1, 2).reshape(n, t, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block, (N, T, dim) -> (N, T, dim): x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """(N, in_channels, image_size, image_size) -> logits (N, num_classes)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, patch: int,
                 dim: int = EMBED_DIM, depth: int = DEPTH, heads: int = HEADS,
                 mlp_ratio: int = MLP_RATIO) -> None:
        super().__init__()
        grid = image_size // patch
        if grid < 1:
            raise ValueError(f"patch {patch} is larger than the image ({image_size} px)")
        self.patch_embed = PatchEmbedding(in_channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02, cut at 2 std) for Linear weights, the class token and
        the position embeddings; zero biases; LayerNorm 1 and 0; the patch convolution keeps
        PyTorch's default."""
        def trunc_normal(t: torch.Tensor) -> None:
            nn.init.trunc_normal_(t, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)

        trunc_normal(self.cls_token)
        trunc_normal(self.pos_embed)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)                                   # (N, T, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)           # (N, 1, dim)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed      # (N, 1 + T, dim)
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])


def vit_tiny(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
             patch: int | None = None) -> VisionTransformer:
    """ViT-Ti / DeiT-Ti; ``patch`` defaults to :func:`patch_size_for` ``(image_size)``."""
    patch = patch_size_for(image_size) if patch is None else patch
    return VisionTransformer(in_channels, image_size, num_classes, patch)
