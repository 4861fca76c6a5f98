"""The zoo's reference architectures: a MobileNetV2-style CNN, an LSTM and a timm-layout ViT for 32x32 digits."""
from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


# ---------------------------------------------------------------- CNN (MobileNetV2-style)

class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6; `groups=channels` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project; identity shortcut when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class DigitsCNN(nn.Module):
    """MobileNetV2-style classifier. Input `image` (batch, 1, 32, 32) -> logits (batch, 10)."""

    # (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
    # ~23 M MACs, ~90% of them in the 1x1 expand/project convs around the wide (192-512 channel)
    # hidden layers, which are not tied to any residual: a channel pruner can shrink them freely.
    SETTINGS = ((1, 24, 1, 1), (8, 32, 2, 2), (8, 64, 2, 2), (4, 128, 1, 2))

    def __init__(self, settings: tuple[tuple[int, int, int, int], ...] = SETTINGS, stem: int = 32,
                 last: int = 256, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU(1, stem, kernel=3)]  # 32x32, stride 1
        cin = stem
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU(cin, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image)  # (B, last, 4, 4)
        x = x.mean(dim=(2, 3))    # global average pool -> (B, last)
        return self.classifier(x)


# ---------------------------------------------------------------- LSTM

class DigitsLSTM(nn.Module):
    """Reads the image row by row. Input `rows` (batch, seq, 32), any seq -> logits (batch, 10)."""

    def __init__(self, features: int = 32, hidden: int = 128, layers: int = 1,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(rows)        # (B, seq, hidden)
        return self.head(out[:, -1])    # last time step -> (B, 10)


# ---------------------------------------------------------------- ViT (timm module layout)

class PatchEmbed(nn.Module):
    """Conv2d patchify: (B, 1, 32, 32) -> (B, 64 tokens, dim) for 4x4 patches."""

    def __init__(self, patch: int = 4, in_chans: int = 1, dim: int = 64):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)                     # (B, dim, 8, 8)
        return x.flatten(2).transpose(1, 2)  # -> (B, 64, dim)


class Attention(nn.Module):
    """timm's Attention: qkv = Linear(d, 3d), proj = Linear(d, d), `num_heads` attribute.

    The head size is read from `qkv.out_features // (3 * num_heads)` at every call, so a pruner
    that removes heads (or narrows them) only has to update `num_heads`.
    """

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        head_dim = self.qkv.out_features // (3 * self.num_heads)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                   # each (B, heads, N, head_dim)
        attn = (q * head_dim ** -0.5) @ k.transpose(-2, -1)       # (B, heads, N, N)
        x = attn.softmax(dim=-1) @ v                              # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(b, n, -1)                   # -> (B, N, heads * head_dim)
        return self.proj(x)


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) 2D sin-cos table: half the channels encode the row, half the column."""
    assert dim % 4 == 0, f"dim {dim} must be a multiple of 4 for a 2D sin-cos table"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # token t = row * grid + col

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega  # (grid*grid, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class DigitsViT(nn.Module):
    """Small ViT, mean-pooled tokens. Input `image` (batch, 1, 32, 32) -> logits (batch, 10)."""

    def __init__(self, dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 2.0,
                 patch: int = 4, img_size: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, 1, dim)
        grid = img_size // patch
        # learned, initialised with fixed 2D sin-cos (MAE-style): trains far faster on small data
        self.pos_embed = nn.Parameter(sincos_pos_embed(grid, dim)[None])  # (1, grid*grid, dim)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image) + self.pos_embed  # (B, 64, dim)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))               # mean over tokens -> (B, 10)
