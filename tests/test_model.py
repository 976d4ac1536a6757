import torch

from training.models import SimpleCNN


def test_parameter_count_is_pinned():
    # 3 conv blocks + 2048->256->10 head, as in the design report (~0.62M).
    assert sum(p.numel() for p in SimpleCNN().parameters()) == 620_810


def test_output_shape_and_class_count():
    model = SimpleCNN(num_classes=7).eval()
    out = model(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 7)
    assert out.dtype == torch.float32


def test_forward_returns_logits_not_probabilities():
    torch.manual_seed(0)
    out = SimpleCNN().eval()(torch.randn(4, 3, 32, 32))
    assert not torch.allclose(out.sum(1), torch.ones(4))
    assert (out < 0).any()


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    x = torch.randn(3, 3, 32, 32)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    assert torch.allclose(ref, model_cl(x.contiguous(memory_format=torch.channels_last)), atol=1e-5)
