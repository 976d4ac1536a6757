"""Grad-CAM as a graph of plain operations, so that ONNX Runtime (no torch, no autograd) can serve it.

Grad-CAM (Selvaraju et al., 2017) of class c at a convolutional activation A [K, h, w]:
    alpha_k = mean over (i, j) of d y_c / d A_kij,     cam = ReLU(sum_k alpha_k A_k),
upsampled to the input grid (bilinear) and divided by its maximum, so the heatmap lies in [0, 1].

Each network's explainer writes the gradient of the head (the layers after A) by hand. Max-pooling routes
each pooled gradient to one input position, so the spatial SUM of d y / d A equals the sum of d y / d P over
the pooled map P: alpha needs only the gradient at P, whatever the argmax positions (and ties) were.
`autograd_cam` is the reference the export compares these graphs with.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from training.models import AirbenchNet, SimpleCNN

# Where each network is explained (recorded in metadata.json).
LAYERS = {"simplecnn": "features.2 (third conv block: conv-BN-ReLU, before its max-pool), 128 x 8 x 8",
          "airbench": "layers.2 (last conv group, after its second GELU), 256 x 3 x 3"}


def normalize_heat(cam: torch.Tensor, size: int) -> torch.Tensor:
    """[N, h, w] non-negative -> [N, size, size] in [0, 1] (all zeros when the map is zero)."""
    up = F.interpolate(cam.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    peak = up.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)  # [N, 1, 1]
    return up / peak


class SimpleCNNCam(nn.Module):
    """A = ReLU(BN(conv3(.))) of the third block, [N, 128, 8, 8]; head: maxpool -> fc1 -> ReLU -> fc2."""

    def __init__(self, model: SimpleCNN, size: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(model.features[0], model.features[1], model.features[2][0],
                                   model.features[2][1], model.features[2][2])
        self.pool = model.features[2][3]
        self.fc1, self.fc2 = model.classifier[1], model.classifier[4]
        self.size = size

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        a = self.trunk(x)  # [N, K, h, w]
        n, k, h, w = a.shape
        hidden = self.fc1(self.pool(a).flatten(1))  # [N, 2048] -> [N, 256], before its ReLU
        logits = self.fc2(torch.relu(hidden))
        grad_hidden = self.fc2.weight[target] * (hidden > 0).to(hidden.dtype)  # [N, 256]
        grad_pooled = grad_hidden @ self.fc1.weight  # [N, 2048] = [N, K * (h/2) * (w/2)]
        alpha = grad_pooled.view(n, k, -1).sum(2) / (h * w)  # [N, K]
        cam = torch.relu((alpha[:, :, None, None] * a).sum(1))  # [N, h, w]
        return normalize_heat(cam, self.size), logits


class AirbenchCam(nn.Module):
    """A = the last conv group's output, [N, 256, 3, 3]; head: maxpool over all of it -> linear x scale."""

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


CAMS = {"simplecnn": SimpleCNNCam, "airbench": AirbenchCam}


def cam_for(arch: str, model: nn.Module, size: int) -> nn.Module:
    if arch not in CAMS:
        raise KeyError(f"no Grad-CAM for the {arch!r} network")
    return CAMS[arch](model, size).eval()


def activation_of(arch: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The explained activation A, computed by the network's own modules."""
    if arch == "simplecnn":
        a = x
        for layer in list(model.features[:2]) + list(model.features[2][:3]):
            a = layer(a)
        return a
    return model.layers(model.activ(model.whiten(x)))


def head_of(arch: str, model: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """The logits from A: the rest of the network."""
    if arch == "simplecnn":
        return model.classifier(model.features[2][3](a))
    return model.head(model.pool(a).flatten(1)) * model.logit_scale


def autograd_cam(arch: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, size: int) -> torch.Tensor:
    """The textbook Grad-CAM with torch autograd: the reference for the explicit graphs."""
    model.eval()
    with torch.no_grad():
        a = activation_of(arch, model, x)
    a.requires_grad_(True)
    with torch.enable_grad():
        head_of(arch, model, a).gather(1, target[:, None]).sum().backward()
    alpha = a.grad.mean((2, 3))  # [N, K]
    cam = torch.relu((alpha[:, :, None, None] * a.detach()).sum(1))
    return normalize_heat(cam, size).detach()


class Explainer(nn.Module):
    """The deployable explanation: uint8 [N, H, W, 3] and target int64 [N] (-1: the top class) ->
    (heatmap [N, H, W] in [0, 1], probabilities [N, C] of the served classifier, TTA and temperature included)."""

    def __init__(self, classifier: nn.Module, cam: nn.Module):
        super().__init__()
        self.classifier = classifier  # export.wrapper.ImageClassifier
        self.cam = cam

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _, probs = self.classifier(image)
        chosen = torch.where(target < 0, probs.argmax(1), target)
        x = image.permute(0, 3, 1, 2).float() * self.classifier.scale - self.classifier.shift  # [N, 3, H, W]
        heat, _ = self.cam(x, chosen)
        return heat, probs
