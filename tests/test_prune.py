"""Structured pruning, sparsity and MAC counting on small CNN / LSTM / ViT-style models built here."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeai.errors import EdgeAIError, UnknownNameError, VerificationError
from edgeai.macs import count_macs
from edgeai.steps import get_model_step
from edgeai.steps.prune import PruneConfig, prune
from edgeai.steps.sparsity import SparsityConfig, sparsify

torch.set_num_threads(1)


def _cbr(cin, cout, stride=1, groups=1, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class Block(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project (+ skip)."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.skip = stride == 1 and cin == cout
        self.conv = nn.Sequential(_cbr(cin, hidden, k=1), _cbr(hidden, hidden, stride, groups=hidden),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.skip else self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = _cbr(3, 32)
        self.blocks = nn.Sequential(Block(32, 16, 1, 1), Block(16, 24, 2, 4), Block(24, 24, 1, 4),
                                    Block(24, 48, 2, 4), Block(48, 48, 1, 4))
        self.head = _cbr(48, 128, k=1)
        self.classifier = nn.Linear(128, classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))).mean((2, 3)))


class Attention(nn.Module):
    """timm-style attention whose forward reshapes with num_heads * head_dim."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(x)


class FixedWidthAttention(Attention):
    """Like timm's own forward: reshapes back to the *input* width, so heads cannot be removed."""

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TinyViT(nn.Module):
    def __init__(self, dim=64, heads=4, depth=2, classes=10, attn=Attention):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.ModuleList(nn.ModuleDict({"norm1": nn.LayerNorm(dim), "attn": attn(dim, heads),
                                                   "norm2": nn.LayerNorm(dim), "mlp": Mlp(dim, 4 * dim)})
                                    for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)          # NCHW -> (N, tokens, dim)
        for b in self.blocks:
            x = x + b["attn"](b["norm1"](x))
            x = x + b["mlp"](b["norm2"](x))
        return self.head(self.norm(x).mean(1))


class TextRNN(nn.Module):
    def __init__(self, rnn=nn.LSTM, hidden=64, layers=2, bidirectional=False, use_h=False):
        super().__init__()
        self.use_h = use_h
        self.emb = nn.Embedding(50, 16)
        self.rnn = rnn(16, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        width = hidden * (2 if bidirectional and not use_h else 1)
        self.fc, self.out = nn.Linear(width, 48), nn.Linear(48, 5)

    def forward(self, ids):
        y, h = self.rnn(self.emb(ids))
        feat = (h[0] if isinstance(h, tuple) else h)[-1] if self.use_h else y[:, -1]
        return self.out(F.relu(self.fc(feat)))


def _cnn_inputs():
    return {"x": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


def _ids():
    return {"ids": torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))}


def _vit_inputs():
    return {"x": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}


def _onnx_max_diff(model, inputs, tmp_path) -> float:
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), tuple(inputs.values()), str(path), input_names=list(inputs), dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        want = model(**inputs).numpy()
    return float(np.abs(got - want).max())


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_prune_cnn_reaches_macs_target_with_a_smaller_dense_model(ratio):
    torch.manual_seed(0)
    model = TinyMobileNet().eval()
    before = copy.deepcopy(model.state_dict())
    inputs = _cnn_inputs()
    pruned, report = prune(model, inputs, PruneConfig(ratio=ratio, round_to=8))
    d = report.details
    assert abs(d["achieved_ratio"] - ratio) <= 0.03, d["achieved_ratio"]
    assert d["macs_after"] == count_macs(pruned, inputs).total < d["macs_before"]
    assert d["params_after"] < d["params_before"]
    assert pruned(**inputs).shape == model(**inputs).shape == (2, 10)
    # dense: plain parameters, no masks, no zeroed channels kept around
    assert not any(m._forward_pre_hooks for m in pruned.modules())
    assert all(float((p == 0).float().mean()) < 0.05 for p in pruned.parameters() if p.dim() > 1)
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert d["max_abs_diff_vs_masked_original"] < 1e-4


@pytest.mark.parametrize("make,inputs", [(TinyMobileNet, _cnn_inputs), (TinyViT, _vit_inputs),
                                         (lambda: TextRNN(bidirectional=True), _ids),
                                         (lambda: TextRNN(nn.GRU, use_h=True), _ids)])
def test_pruned_model_exports_to_onnx_and_matches_torch(make, inputs, tmp_path):
    torch.manual_seed(0)
    pruned, report = prune(make().eval(), inputs(), PruneConfig(ratio=0.4))
    assert report.details["macs_after"] < report.details["macs_before"]
    assert _onnx_max_diff(pruned, inputs(), tmp_path) < 1e-4


@pytest.mark.parametrize("rnn,bidirectional", [(nn.LSTM, False), (nn.LSTM, True), (nn.GRU, True)])
def test_rnn_pruning_of_planted_zero_units_leaves_outputs_identical(rnn, bidirectional):
    torch.manual_seed(0)
    model = TextRNN(rnn, hidden=64, bidirectional=bidirectional).eval()
    gates, H, dirs = (4 if rnn is nn.LSTM else 3), 64, (2 if bidirectional else 1)
    dead = torch.arange(0, 64, 2)                        # 32 units per layer and direction do nothing
    rows = torch.cat([g * H + dead for g in range(gates)])
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            p[rows] = 0                                  # all gate rows and biases of the dead units
            if name.startswith("weight_hh"):
                p[:, dead] = 0
            if name.startswith("weight_ih_l1"):
                p[:, torch.cat([d * H + dead for d in range(dirs)])] = 0
        model.fc.weight[:, torch.cat([d * H + dead for d in range(dirs)])] = 0
    pruned, report = prune(model, _ids(), PruneConfig(ratio=0.5, pinned=("fc",)))   # only the RNN is cut
    new_h = pruned.rnn.hidden_size
    assert type(pruned.rnn) is rnn and 32 <= new_h < 64
    ids = torch.randint(0, 50, (8, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(pruned(ids=ids), model(ids=ids), atol=1e-6)
    assert pruned.fc.in_features == new_h * dirs


def _heavy_front_cnn():
    """The MACs sit in the two full-resolution layers; a 16-wide layer sits in the middle."""
    return nn.Sequential(_cbr(3, 64), _cbr(64, 64), _cbr(64, 16, stride=2), _cbr(16, 64, stride=2),
                         _cbr(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def _seq_inputs():
    return {"input": _cnn_inputs()["x"]}


def _widths(report):
    return {layer["name"]: (layer["before"], layer["after"]) for layer in report.details["layers"]}


def test_macs_allocation_cuts_mac_heavy_layers_more_and_protects_narrow_ones():
    torch.manual_seed(0)
    inputs = _seq_inputs()
    _, rep = prune(_heavy_front_cnn(), inputs, PruneConfig(ratio=0.5, allocation="macs", round_to=8))
    w = _widths(rep)
    cut = {n: 1 - a / b for n, (b, a) in w.items()}
    assert w["2.0"] == (16, 16)                              # narrow layer protected
    assert cut["1.0"] > cut["3.0"] + 0.2                     # full-res 64x64 conv cut far more than ...
    assert cut["1.0"] > cut["4.0"] + 0.2                     # ... the same width at 1/16 the resolution
    _, rep_u = prune(_heavy_front_cnn(), inputs, PruneConfig(ratio=0.5, allocation="uniform", round_to=8))
    cut_u = {n: 1 - a / b for n, (b, a) in _widths(rep_u).items()}
    assert abs(cut_u["1.0"] - cut_u["4.0"]) < 0.15          # uniform: same ratio everywhere
    assert abs(rep.details["achieved_ratio"] - 0.5) < 0.03


def test_pinned_layers_keep_their_width():
    torch.manual_seed(0)
    pruned, rep = prune(_heavy_front_cnn(), _seq_inputs(), PruneConfig(ratio=0.4, pinned=("1",)))
    assert pruned[1][0].out_channels == 64 and pruned[1][1].num_features == 64
    assert _widths(rep)["1.0"] == (64, 64)
    assert rep.details["achieved_ratio"] > 0.35


def test_target_macs_gives_an_absolute_budget():
    model = TinyMobileNet().eval()
    base = count_macs(model, _cnn_inputs()).total
    pruned, rep = prune(model, _cnn_inputs(), PruneConfig(target_macs=base // 3))
    assert abs(count_macs(pruned, _cnn_inputs()).total - base / 3) < 0.03 * base


@pytest.mark.parametrize("importance", ["l2", "taylor", "bn_scale"])
def test_every_importance_reaches_the_target_and_gives_different_channels(importance):
    torch.manual_seed(0)
    model = TinyMobileNet().eval()
    ref, _ = prune(model, _cnn_inputs(), PruneConfig(ratio=0.5, importance="l1"))
    pruned, rep = prune(model, _cnn_inputs(), PruneConfig(ratio=0.5, importance=importance))
    assert abs(rep.details["achieved_ratio"] - 0.5) < 0.03
    assert not torch.equal(ref.stem[0].weight, pruned.stem[0].weight)


def test_vit_heads_and_ffn_width_are_pruned():
    torch.manual_seed(0)
    pruned, rep = prune(TinyViT().eval(), _vit_inputs(), PruneConfig(ratio=0.4))
    attn, mlp = pruned.blocks[0]["attn"], pruned.blocks[0]["mlp"]
    assert attn.num_heads < 4 and attn.qkv.out_features == 3 * attn.num_heads * 16
    assert mlp.fc1.out_features < 256 and mlp.fc2.in_features == mlp.fc1.out_features
    assert abs(rep.details["achieved_ratio"] - 0.4) < 0.06


def test_attention_that_reshapes_to_input_width_keeps_its_heads_with_a_note():
    pruned, rep = prune(TinyViT(attn=FixedWidthAttention).eval(), _vit_inputs(), PruneConfig(ratio=0.3))
    assert all(b["attn"].num_heads == 4 for b in pruned.blocks)
    assert any("heads of 'blocks.0.attn' kept" in n for n in rep.notes)


class PermuteFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1, stride=4)
        self.fc = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))    # NCHW -> NHWC before the flatten


def test_permute_before_flatten_is_refused_not_silently_wrong():
    with pytest.raises(VerificationError, match="not the original minus the removed channels"):
        prune(PermuteFlatten().eval(), _cnn_inputs(), PruneConfig(ratio=0.5, auto_pin=False))
    pruned, _ = prune(PermuteFlatten().eval(), _cnn_inputs(), PruneConfig(ratio=0.3, pinned=("c2",)))
    assert pruned.c2.out_channels == 64 and pruned.c1.out_channels < 32


def test_permute_before_flatten_pins_the_conv_feeding_it_automatically():
    pruned, rep = prune(PermuteFlatten().eval(), _cnn_inputs(), PruneConfig(ratio=0.5))
    assert [b["name"] for b in rep.details["auto_pinned"]] == ["c2"]
    assert "not the original minus the removed channels" in rep.details["auto_pinned"][0]["reason"]
    assert pruned.c2.out_channels == 64 and pruned.c1.out_channels < 32
    assert rep.details["achieved_ratio"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(ratio=0.0), EdgeAIError, "between 0 and 1"),
    (dict(ratio=1.2), EdgeAIError, "between 0 and 1"),
    (dict(), EdgeAIError, "exactly one of ratio"),
    (dict(ratio=0.5, target_macs=10), EdgeAIError, "exactly one of ratio"),
    (dict(ratio=0.5, importance="fisher"), UnknownNameError, "known: l1, l2, taylor, bn_scale"),
    (dict(ratio=0.5, allocation="greedy"), UnknownNameError, "known: macs, uniform"),
    (dict(ratio=0.5, pinned=("stemm",)), EdgeAIError, "did you mean stem"),
    (dict(ratio=0.5, pinned=("stem", "blocks", "head")), EdgeAIError, "nothing can be pruned"),
    (dict(ratio=0.97), EdgeAIError, "at most"),
])
def test_bad_prune_configs_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        prune(TinyMobileNet().eval(), _cnn_inputs(), PruneConfig(**kwargs))


def test_prune_sparsity_and_distill_are_registered_model_steps():
    from edgeai.steps.distill import DistillConfig

    assert get_model_step("prune").config_cls is PruneConfig
    assert get_model_step("sparsity").fn is sparsify
    assert get_model_step("distill").config_cls is DistillConfig


def test_mac_counter_counts_lstm_gates_attention_matmuls_and_depthwise_convs():
    lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
    assert count_macs(lstm, {"input": torch.randn(2, 10, 16)}).total == 2 * 10 * 4 * 32 * (16 + 32 + 32 + 32)
    attn = Attention(32, 4)
    macs = count_macs(attn, {"x": torch.randn(2, 10, 32)})
    assert macs.per_module["qkv"] == 2 * 10 * 32 * 96 and macs.per_module["proj"] == 2 * 10 * 32 * 32
    assert macs.per_module[""] == 2 * 4 * 10 * 10 * (8 + 8)           # q @ k^T and attn @ v
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(dw, {"input": torch.randn(1, 8, 10, 10)}).total == 8 * 9 * 100


def test_sparsity_2_4_keeps_exactly_two_of_every_four_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Conv1d(64, 16, 3))
    sparse, rep = sparsify(model, {}, SparsityConfig(pattern="2:4"))
    for w in (sparse[0].weight, sparse[2].weight):
        groups = (w.detach().reshape(w.shape[0], -1).reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert torch.all(groups == 2)
        assert isinstance(w, nn.Parameter) and type(w.data) is torch.Tensor
    kept = sparse[0].weight.detach().reshape(64, -1, 4).abs()
    orig = model[0].weight.detach().reshape(64, -1, 4).abs()
    assert torch.equal(kept.topk(2, -1).values, orig.topk(2, -1).values)   # the two largest survive
    assert rep.details["sparsity"] == 0.5 and rep.details["gzip_ratio"] < 0.9
    assert "no speedup" in rep.notes[0]
    assert (model[0].weight != 0).all()                                     # input untouched


def test_sparsity_global_and_layer_scopes_zero_the_requested_fraction():
    torch.manual_seed(0)
    model = TextRNN().eval()
    with torch.no_grad():
        model.fc.weight.mul_(10)                       # one layer of large weights
    sparse_g, rep_g = sparsify(model, {}, SparsityConfig(ratio=0.6, scope="global"))
    sparse_l, rep_l = sparsify(model, {}, SparsityConfig(ratio=0.6, scope="layer"))
    assert abs(rep_g.details["sparsity"] - 0.6) < 1e-3 and abs(rep_l.details["sparsity"] - 0.6) < 1e-3
    assert rep_g.details["per_layer"]["fc.weight"] < 0.1                          # global spares the big layer
    assert all(abs(v - 0.6) < 1e-3 for v in rep_l.details["per_layer"].values())
    assert rep_g.details["per_layer"]["rnn.weight_hh_l0"] > 0.6


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale"])
@pytest.mark.parametrize("make,inputs", [(TinyViT, _vit_inputs), (lambda: TextRNN(nn.GRU, bidirectional=True), _ids)])
def test_heads_and_hidden_units_prune_exactly_under_every_importance(importance, make, inputs):
    torch.manual_seed(0)
    model = make().eval()
    pruned, rep = prune(model, inputs(), PruneConfig(ratio=0.4, importance=importance))
    assert rep.details["max_abs_diff_vs_masked_original"] < 1e-5
    assert rep.details["macs_after"] < 0.7 * rep.details["macs_before"]
    assert all(p.requires_grad for p in pruned.parameters()) and all(p.grad is None for p in pruned.parameters())
    assert (importance == "bn_scale") == any("bn_scale has no meaning" in n for n in rep.notes)


@pytest.mark.parametrize("name", ["cnn", "lstm", "vit"])
def test_zoo_models_prune_exactly_and_export_to_onnx(name, tmp_path):
    import edgeai.zoo as zoo

    ref = zoo.REFERENCE_MODELS[name]
    model = getattr(zoo, f"digits_{name}")()
    test = dict(np.load(ref.test_data))
    key = next(k for k in test if k != "labels")
    inputs = {key: torch.from_numpy(test[key][:2])}
    pruned, rep = prune(model, inputs, PruneConfig(ratio=0.5, round_to=8))   # as fine on every CPU
    assert abs(rep.details["achieved_ratio"] - 0.5) < 0.03
    assert rep.details["max_abs_diff_vs_masked_original"] < 1e-4
    assert rep.details["params_after"] < 0.7 * rep.details["params_before"]
    assert _onnx_max_diff(pruned, inputs, tmp_path) < 1e-4


@pytest.mark.parametrize("flags,expected", [(["avx", "avx2", "avx512f", "fma"], 16), (["avx", "avx2", "fma"], 8),
                                            (["asimd", "asimddp"], 8)])
def test_round_to_defaults_to_the_cpus_vector_width(monkeypatch, flags, expected):
    import edgeai.hw as hw

    monkeypatch.setattr(hw, "cpu_info", lambda: {"flags": flags})
    _, rep = prune(TinyMobileNet().eval(), _cnn_inputs(), PruneConfig(ratio=0.5))
    assert rep.config["round_to"] == expected
    assert all(l["after"] % expected == 0 for l in rep.details["layers"] if l["after"] != l["before"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=0.5, target_speedup=2.0), "got ratio, target_speedup"),
    (dict(target_speedup=0.9), "must be > 1"),
    (dict(target_latency_ms=-1.0), "must be > 0"),
    (dict(target_speedup=2.0), "measured on the exported model"),
])
def test_latency_targets_are_exclusive_and_need_the_pipeline(kwargs, match):
    with pytest.raises(EdgeAIError, match=match):
        prune(TinyMobileNet().eval(), _cnn_inputs(), PruneConfig(**kwargs))


def test_up_to_limit_prunes_to_what_the_settings_allow_instead_of_failing():
    with pytest.raises(EdgeAIError, match="at most") as refused:
        prune(TinyMobileNet().eval(), _cnn_inputs(), PruneConfig(ratio=0.97))
    limit = float(str(refused.value).split("at most ")[1].split("%")[0]) / 100
    pruned, rep = prune(TinyMobileNet().eval(), _cnn_inputs(), PruneConfig(ratio=0.97, up_to_limit=True))
    assert rep.details["achieved_ratio"] == pytest.approx(limit, abs=0.03) and rep.details["achieved_ratio"] < 0.9
    assert rep.notes[0].startswith(f"asked to remove 97.0% of MACs; at most {limit:.1%} can be removed")
    assert not any("channel rounding" in n for n in rep.notes)
    reachable, rep = prune(TinyMobileNet().eval(), _cnn_inputs(), PruneConfig(ratio=0.5, up_to_limit=True))
    assert rep.details["achieved_ratio"] == pytest.approx(0.5, abs=0.03) and not any("up_to_limit" in n for n in rep.notes)
