"""deploy_models.py: the deploy-shaped models have the shapes they are named after."""

from __future__ import annotations

import torch

from benchmarks import deploy_models


def test_mobilenet_v2_has_mobilenet_v2s_parameters_and_output():
    model = deploy_models.mobilenet_v2()
    # torchvision's mobilenet_v2() (width 1.0, 1000 classes) holds 3,504,872 parameters.
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    small = deploy_models.mobilenet_v2(stages=((1, 16, 1, 1), (6, 24, 2, 2)), num_classes=5).eval()
    with torch.no_grad():
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert not model.training
