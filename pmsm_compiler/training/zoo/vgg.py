"""CIFAR VGG-16 as in QCFS: conv3x3-BN-act blocks, average pooling (not max), no dropout,
classifier Linear(512→4096)-act-Linear(4096→4096)-act-Linear(4096→classes) without BN."""

from __future__ import annotations

import torch.nn as nn

from pmsm_compiler.training.activations import as_spec

VGG16_CFG = (64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A")


class VGG(nn.Module):
    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10, act="pqa", hidden: int = 4096,
                 image_size: int = 32, in_channels: int = 3):
        super().__init__()
        act = as_spec(act)
        layers, c = [], in_channels
        size = image_size
        for v in cfg:
            if v == "A":
                layers.append(nn.AvgPool2d(2))
                size //= 2
            elif v == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), act.make()]
                c = v
        self.features = nn.Sequential(*layers)
        flat = c * size * size
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), act.make(), nn.Linear(hidden, hidden), act.make(),
            nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg16(num_classes: int = 10, act="pqa") -> VGG:
    return VGG(VGG16_CFG, num_classes, act)


def vgg_tiny(num_classes: int = 10, act="pqa", pool: str = "A") -> VGG:
    """Same structure at a fraction of the size (8/16/32 channels, hidden 64), for fast tests.
    ``pool="M"`` gives max pooling, to exercise the stateful MaxPool wrapper."""
    return VGG((8, pool, 16, pool, 32, pool), num_classes, act, hidden=64)
