"""Trace the network into an ONNX graph with two outputs: the logits and the last feature map."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from resnest.torch.resnet import ResNet

from inference.model_spec import FEATURES_NAME, INPUT_NAME, LOGITS_NAME

# Opset 17 with the TorchScript exporter gives IR version 8, which the pinned onnxruntime reads.
OPSET = 17


class LogitsAndFeatures(torch.nn.Module):
    """The network's forward, but also returning its final feature map (before pooling).

    The `resnest` package's ResNet has no feature hook, so its forward is spelled out;
    timm models split theirs into `forward_features` and `forward_head`.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.network
        if isinstance(net, ResNet):
            x = net.maxpool(net.relu(net.bn1(net.conv1(image))))
            features = net.layer4(net.layer3(net.layer2(net.layer1(x))))
            return net.fc(torch.flatten(net.avgpool(features), 1)), features
        timm_net: Any = net
        features = timm_net.forward_features(image)
        return timm_net.forward_head(features), features


def classifier_of(network: torch.nn.Module) -> torch.nn.Module:
    """The final layer mapping pooled features to logits."""
    if isinstance(network, ResNet):
        return network.fc
    classifier: torch.nn.Module = network.get_classifier()  # type: ignore[operator]
    return classifier


def export_graph(network: torch.nn.Module, input_size: int, destination: Path) -> None:
    """Write the ONNX graph (no metadata yet) with a dynamic batch axis."""
    export_module(LogitsAndFeatures(network).eval(), input_size, destination,
                  (LOGITS_NAME, FEATURES_NAME))


def export_module(module: torch.nn.Module, input_size: int, destination: Path,
                  output_names: tuple[str, ...]) -> None:
    """Trace `module` (one image batch in, `output_names` out) with a dynamic batch axis."""
    example = torch.zeros(2, 3, input_size, input_size)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo, but it is 10x faster
        # here, writes a single self-contained file and gives identical numbers.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(destination), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=list(output_names),
            dynamic_axes={name: batch for name in (INPUT_NAME, *output_names)},
            do_constant_folding=True)
