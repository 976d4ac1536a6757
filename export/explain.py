"""Class activation maps as a graph of plain operations, so that ONNX Runtime (no torch, no autograd) can serve them.

Both methods weigh a convolutional activation A [K, h, w] by the gradient of the class score y_c:
    Grad-CAM (Selvaraju et al., 2017):  alpha_k = mean over (i, j) of dy_c/dA_kij,   cam = ReLU(sum_k alpha_k A_k)
    LayerCAM (Jiang et al., 2021):      cam = ReLU(sum_k ReLU(dy_c/dA_k) * A_k)     (element-wise weights)
then upsampled to the input grid (bilinear) and divided by its maximum, so the heatmap lies in [0, 1].
Which one, and where, is chosen per network by measured faithfulness (METHODS, LAYERS; docs/experiments.md):
for SimpleCNN, LayerCAM of the last block's pooled output hid more of what the network used (probability drop
0.453) than Grad-CAM before the pool (0.367); for airbench's 3x3 map the two are equal (0.568, 0.559) and
Grad-CAM stays. SimpleCNN is explained after its last max-pool, not before: there LayerCAM would route each
gradient to its window's maximum, and where two values nearly tie, ONNX Runtime's and torch's last-bit
differences pick different positions (2 images in 2,000 moved by 0.07), so the graph could not match autograd.

Each network's explainer writes the gradient of the head (the layers after A) by hand. For airbench's head
(a max-pool over the whole map, then a linear layer), Grad-CAM needs only the spatial SUM of dy/dA, which
equals the gradient at the pooled value whichever position held the maximum. `autograd_cam` is the reference
the export compares these graphs with, except on images where a ReLU of the head sits at its kink (`at_kink`):
there the gradient is undefined (either one-sided derivative is a valid answer), and which side a value falls
on depends on last-bit differences between ONNX Runtime and torch (one image in 2,000 had a hidden unit at
1.5e-8 and moved 0.004 (Grad-CAM) or 0.0015 (LayerCAM)).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from training.models import AirbenchNet, SimpleCNN

# Where each network is explained (recorded in metadata.json).
LAYERS = {"simplecnn": "features.2 (third conv block's output: conv-BN-ReLU-max-pool), 128 x 4 x 4",
          "airbench": "layers.2 (last conv group, after its second GELU), 256 x 3 x 3",
          "residual": "layers.2 (last residual group, after the sum's GELU), 256 x 3 x 3"}
METHODS = {"simplecnn": "LayerCAM", "airbench": "Grad-CAM", "residual": "Grad-CAM"}


def normalize_heat(cam: torch.Tensor, size: int) -> torch.Tensor:
    """[N, h, w] non-negative -> [N, size, size] in [0, 1] (all zeros when the map is zero)."""
    up = F.interpolate(cam.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    peak = up.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)  # [N, 1, 1]
    return up / peak


class SimpleCNNCam(nn.Module):
    """LayerCAM of A = the third block's output (after its max-pool), [N, 128, 4, 4]; head: fc1 -> ReLU -> fc2."""

    def __init__(self, model: SimpleCNN, size: int = 32):
        super().__init__()
        self.trunk = model.features
        self.fc1, self.fc2 = model.classifier[1], model.classifier[4]
        self.size = size

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        a = self.trunk(x)  # [N, K, h, w]
        n, k, h, w = a.shape
        hidden = self.fc1(a.flatten(1))  # [N, K * h * w] -> [N, 256], before its ReLU
        logits = self.fc2(torch.relu(hidden))
        grad_hidden = self.fc2.weight[target] * (hidden > 0).to(hidden.dtype)  # [N, 256]
        grad_a = (grad_hidden @ self.fc1.weight).view(n, k, h, w)  # [N, K * h * w] -> [N, K, h, w]
        cam = torch.relu((torch.relu(grad_a) * a).sum(1))  # [N, h, w]
        return normalize_heat(cam, self.size), logits


class AirbenchCam(nn.Module):
    """Grad-CAM of A = the last conv group's output, [N, 256, 3, 3]; head: maxpool over all of it -> linear x scale."""

    def __init__(self, model: AirbenchNet, size: int = 32):
        super().__init__()
        self.whiten, self.activ, self.layers = model.whiten, model.activ, model.layers
        self.pool, self.head, self.scale = model.pool, model.head, float(model.logit_scale)
        self.size = size

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        a = self.layers(self.activ(self.whiten(x)))  # [N, K, h, w]
        h, w = a.shape[2], a.shape[3]
        logits = self.head(self.pool(a).flatten(1)) * self.scale
        alpha = self.head.weight[target] * self.scale / (h * w)  # [N, K]: d y / d pooled, summed over one position
        cam = torch.relu((alpha[:, :, None, None] * a).sum(1))  # [N, h, w]
        return normalize_heat(cam, self.size), logits


# The residual network keeps airbench's attributes and head (training/models/residual.py).
CAMS = {"simplecnn": SimpleCNNCam, "airbench": AirbenchCam, "residual": AirbenchCam}


def cam_for(arch: str, model: nn.Module, size: int) -> nn.Module:
    if arch not in CAMS:
        raise KeyError(f"no explanation graph for the {arch!r} network")
    return CAMS[arch](model, size).eval()


def activation_of(arch: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The explained activation A, computed by the network's own modules."""
    if arch == "simplecnn":
        return model.features(x)
    return model.layers(model.activ(model.whiten(x)))


def head_of(arch: str, model: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """The logits from A: the rest of the network."""
    if arch == "simplecnn":
        return model.classifier(a)
    return model.head(model.pool(a).flatten(1)) * model.logit_scale


def at_kink(arch: str, model: nn.Module, a: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """bool [N]: images whose explanation crosses a ReLU within eps of zero, from the explained activation A
    (SimpleCNN's hidden layer; airbench's head after A is max-pool and linear, whose Grad-CAM sum has no kink)."""
    if arch != "simplecnn":
        return torch.zeros(a.shape[0], dtype=torch.bool)
    with torch.no_grad():
        hidden = model.classifier[1](a.flatten(1))  # [N, 128, 4, 4] -> [N, 256], before the ReLU
    return hidden.abs().amin(1) < eps


def autograd_cam(arch: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, size: int,
                 activation: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The network's method (METHODS) with torch autograd, as the papers write it: the reference for the
    explicit graphs. `activation`: A for x when the caller already has it (activation_of)."""
    model.eval()
    with torch.no_grad():
        a = (activation if activation is not None else activation_of(arch, model, x)).detach().clone()
    a.requires_grad_(True)
    with torch.enable_grad():
        head_of(arch, model, a).gather(1, target[:, None]).sum().backward()
    if METHODS[arch] == "LayerCAM":
        cam = torch.relu((torch.relu(a.grad) * a.detach()).sum(1))
    else:
        alpha = a.grad.mean((2, 3))  # [N, K]
        cam = torch.relu((alpha[:, :, None, None] * a.detach()).sum(1))
    return normalize_heat(cam, size).detach()


class ExplainWrapper(nn.Module):
    """The deployable explanation: uint8 [N, H, W, 3] and target int64 [N] (-1: the top class) ->
    (heatmap [N, H, W] in [0, 1], probabilities [N, C] of the served classifier, TTA and temperature included,
    and its ood_score [N])."""

    def __init__(self, classifier: nn.Module, cam: nn.Module):
        super().__init__()
        self.classifier = classifier  # export.wrapper.ImageClassifier
        self.cam = cam

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, probs, ood_score = self.classifier(image)  # export.ood.ScoredClassifier
        chosen = torch.where(target < 0, probs.argmax(1), target)
        x = image.permute(0, 3, 1, 2).float() * self.classifier.scale - self.classifier.shift  # [N, 3, H, W]
        heat, _ = self.cam(x, chosen)
        return heat, probs, ood_score
