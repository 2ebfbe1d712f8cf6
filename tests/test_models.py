"""Contracts every registered architecture keeps."""
import pytest
import torch

from personseg.models import create_model, list_models
from personseg.models.blocks import make_divisible

PRETRAINED = "../shared/pretrained"


@pytest.fixture(scope="module", params=list_models())
def model(request):
    torch.manual_seed(0)
    return create_model(request.param)


def logits_of(output):
    """Recurrent models (recurrent_*) return (logits, state), multi-task ones (logits, parts, heatmaps);
    the others return logits."""
    return output[0] if isinstance(output, tuple) else output


def every_output(output) -> list:
    """The tensors a model returns that carry its heads (a recurrent model's state is not a head)."""
    if isinstance(output, tuple) and len(output) == 3:
        return list(output)
    return [logits_of(output)]


def test_registry_lists_the_seed_architectures():
    assert {"unet_mobilenet_v1", "unet_mobilenet_v2", "unet_mobilenet_v3", "unet", "deeplabv3plus"} <= set(list_models())
    with pytest.raises(ValueError, match="available"):
        create_model("no_such_model")


def test_output_shape_at_odd_size(model):
    model.eval()
    with torch.no_grad():
        out = logits_of(model(torch.randn(1, 3, 181, 317)))
    assert out.shape == (1, 1, 181, 317)
    assert torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient(model):
    model.train()
    outputs = every_output(model(torch.randn(2, 3, 45, 77)))
    assert outputs[0].shape == (2, 1, 45, 77)
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad[:5]}"
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradient for {zero[:5]}"
    model.zero_grad(set_to_none=True)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, kwargs, expected", [
    ("unet_mobilenet_v1", {"alpha": 1.0}, 12e6),  # published: about 12M at 320x180
    ("unet_mobilenet_v3", {"alpha": 0.3}, 3e6),   # published: about 3M
    ("unet", {}, 31e6),                           # the classic U-Net: about 31M
])
def test_parameter_counts_of_seed_configurations(name, kwargs, expected):
    n = n_params(create_model(name, **kwargs))
    assert abs(n - expected) / expected < 0.2, f"{name} has {n / 1e6:.2f}M parameters"


def test_alpha_scales_every_encoder_block():
    small, large = create_model("unet_mobilenet_v1", alpha=0.25), create_model("unet_mobilenet_v1", alpha=1.0)
    assert small.encoder.channels == [make_divisible(c * 0.25) for c in large.encoder.channels]
    assert n_params(small) < n_params(large) / 8


def test_encoder_strides():
    for name in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3"):
        model = create_model(f"unet_{name}", alpha=0.5)
        feats = model.encoder(torch.randn(1, 3, 64, 96))
        assert [f.shape[-1] for f in feats] == [48, 24, 12, 6, 3], name
        assert [f.shape[1] for f in feats] == model.encoder.channels


@pytest.mark.parametrize("name, kwargs, file", [
    ("unet_mobilenet_v2", {}, "mobilenetv2_1.0_imagenet_bnfolded.pth"),
    ("unet_mobilenet_v1", {"alpha": 0.25}, "mobilenetv1_0.25_imagenet.pth.tar"),
    ("deeplabv3plus", {}, "mobilenetv2_1.0_imagenet_bnfolded.pth"),
    ("hybrid_mobilenet_v2", {}, "mobilenetv2_1.0_imagenet_bnfolded.pth"),
])
def test_pretrained_encoder_weights_load(pretrained_dir, name, kwargs, file):
    path = pretrained_dir / file
    torch.manual_seed(0)
    random_init = create_model(name, **kwargs)
    model = create_model(name, **kwargs, encoder_weights=str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    # the first conv's weights are exactly the pretrained ones, and differ from a random init
    first_conv = next(v for k, v in state.items() if k.endswith(".weight") and v.ndim == 4)
    assert torch.equal(model.encoder.features[0][0].weight, first_conv)
    assert not torch.equal(random_init.encoder.features[0][0].weight, first_conv)


def test_folded_batchnorm_reproduces_the_pretrained_network(pretrained_dir):
    """With BN folded into biases, our conv+BN encoder must compute the original network's features."""
    path = pretrained_dir / "mobilenetv2_1.0_imagenet_bnfolded.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model("unet_mobilenet_v2", encoder_weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    stem = torch.nn.functional.conv2d(x, state["features.0.0.weight"], state["features.0.0.bias"], stride=2, padding=1)
    with torch.no_grad():
        ours = model.encoder.features[0](x)
    torch.testing.assert_close(ours, stem.clamp(0, 6), atol=1e-4, rtol=1e-4)


def test_pretrained_weights_with_wrong_alpha_give_a_clear_error(pretrained_dir):
    with pytest.raises(ValueError, match="alpha"):
        create_model("unet_mobilenet_v2", alpha=0.5,
                     encoder_weights=str(pretrained_dir / "mobilenetv2_1.0_imagenet_bnfolded.pth"))


def test_hybrid_positions_resize_to_a_map_they_were_not_built_for():
    from personseg.models.hybrid import GlobalContext
    torch.manual_seed(0)
    block = GlobalContext(channels=32, dim=16, depth=1, grid=4).eval()
    with torch.no_grad():
        for h, w in [(4, 4), (3, 7), (9, 5)]:  # the grid's own size, smaller, larger
            x = torch.randn(2, 32, h, w)
            y = block(x)
            assert y.shape == x.shape and torch.isfinite(y).all()
        # attention is global: changing one corner pixel changes the output at the opposite corner
        x = torch.randn(1, 32, 9, 5)
        x2 = x.clone()
        x2[..., 0, 0] += 5.0
        assert (block(x2) - block(x))[..., -1, -1].abs().max() > 1e-4


def test_hybrid_attention_matches_torch_multihead_attention():
    from personseg.models.hybrid import SelfAttention
    torch.manual_seed(0)
    ours = SelfAttention(dim=16, heads=4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
        x = torch.randn(2, 11, 16)
        torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_multitask_heads_have_the_documented_shapes_and_take_the_unet_weights():
    from personseg.models.multitask import MultiTaskUNet

    torch.manual_seed(0)
    unet = create_model("unet_mobilenet_v2").eval()
    multi = create_model("multitask_unet_mobilenet_v2").eval()
    missing, unexpected = multi.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("heads.") for k in missing)
    x = torch.randn(1, 3, 181, 317)
    with torch.no_grad():
        logits, parts, heatmaps = multi(x)
        torch.testing.assert_close(logits, unet(x))  # the person mask is the UNet's
    assert parts.shape == (1, 6, 181, 317) and heatmaps.shape == (1, 17, 46, 80)
    assert multi.outputs == ("logits", "parts", "heatmaps")
    with_presence = MultiTaskUNet(presence=True).eval()  # `parts` as shipped: accurate's presence head too
    with_presence.load_state_dict(multi.state_dict(), strict=False)
    with torch.no_grad():
        out = with_presence(x)
    assert with_presence.outputs == ("logits", "parts", "heatmaps", "presence") and out[3].shape == (1, 1)
    torch.testing.assert_close(out[0], logits)
