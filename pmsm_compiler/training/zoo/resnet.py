"""CIFAR ResNet-20 (QCFS ``ResNet4Cifar(BasicBlock, [3, 3, 3])``), with a pluggable activation.

stem: conv3x3(3→16)-BN-act; three stages of BasicBlocks with 16/32/64 channels (stride 2 at the
start of stages 2 and 3, shortcut conv1x1-BN there); a BasicBlock is conv-BN-act-conv-BN, plus the
shortcut, then the activation after the residual add; global average pool; linear to the classes.

A block's first activation may run with its levels shifted (``level_shift`` m > 0,
``pmsm_compiler.training.level_shift``): act1 reads its input raised by m·s and has the bounds
αL + m..βL + m, and conv2 pads with m·s instead of zeros, so that the block computes what it did with
the level k as k + m. The default m = 0 is the plain block.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pmsm_compiler.training.activations import as_spec


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, act):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act.make()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.act2 = act.make()
        self.level_shift = 0  # m: act1's levels are k + m (level_shift.apply_level_shift)
        self.shift_value = 0.0  # m·s as a Python number, for the exporter (refreshed by every eager forward)

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        if not self.level_shift:
            out = self.act1(out)
        else:
            if not torch.onnx.is_in_onnx_export():  # the exporter traces λ symbolically: it reads the number
                self.refresh_export_constants()
                shift = self.act1.lam * (self.level_shift / self.act1.levels)  # λ gets the gradient
            else:
                shift = self.shift_value
            # conv2 (built with padding 0) sees k + m inside and m at the border: the zero padding of k
            # (the fill is a number, so λ's gradient does not reach it through the one-pixel border)
            out = F.pad(self.act1(out + shift), (1, 1, 1, 1), value=self.shift_value)
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))

    def refresh_export_constants(self) -> None:
        """m·s from the current λ, as the number the exporter writes into the graph."""
        if self.level_shift:
            self.shift_value = float(self.act1.lam.detach()) * self.level_shift / self.act1.levels


class ResNetCifar(nn.Module):
    def __init__(self, blocks=(3, 3, 3), widths=(16, 32, 64), num_classes: int = 10, act="pqa",
                 in_channels: int = 3):
        super().__init__()
        act = as_spec(act)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), act.make())
        layers, in_planes = [], widths[0]
        for stage, (n, planes) in enumerate(zip(blocks, widths)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride, act))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def resnet20(num_classes: int = 10, act="pqa") -> ResNetCifar:
    return ResNetCifar((3, 3, 3), (16, 32, 64), num_classes, act)


def resnet_tiny(num_classes: int = 10, act="pqa") -> ResNetCifar:
    """One block per stage, 4/8/16 channels: the same structure as ResNet-20 for fast tests."""
    return ResNetCifar((1, 1, 1), (4, 8, 16), num_classes, act)
