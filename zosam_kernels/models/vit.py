"""A tiny DeiT-like vision transformer for 32x32 images: patch embedding by a
strided conv, a class token, learned position embeddings, pre-norm encoder
blocks (multi-head attention and a GELU MLP, with dropout), a LayerNorm and a
linear head. No BatchNorm anywhere: the transformer counterpart of the CIFAR
ResNets in the tests and examples (DeiT-Tiny/Small themselves come from timm)."""
import torch
from torch import nn


class ViT(nn.Module):
    def __init__(self, num_classes=10, image_size=32, patch=4, dim=64, depth=2, heads=4, mlp_ratio=2,
                 dropout=0.1):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"patch must divide image_size, got patch={patch}, image_size={image_size}")
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=mlp_ratio * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)               # (B, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(self.dropout(x))
        return self.head(self.norm(x[:, 0]))


def vit_tiny(num_classes=10):
    return ViT(num_classes)
