"""Tiny ArcFace-shaped ONNX recognition model (random weights), laid out like antelopev2's glintr100.onnx.

Input `input.1` (N, 3, 112, 112) float with a dynamic batch axis, output (N, 512): the shape contract that
`insightface.model_zoo.get_model` routes to `ArcFaceONNX`, so the engine's insightface backend loads it
through the same code as the real pack.
"""

from __future__ import annotations

import warnings
from pathlib import Path


def build_tiny_arcface(out_dir: Path, seed: int = 0, filename: str = "glintr100.onnx") -> Path:
    import torch
    from torch import nn

    from ._common import seed_all

    seed_all(seed)

    class TinyArcFace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1),
                nn.BatchNorm2d(8),
                nn.PReLU(8),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.BatchNorm2d(16),
                nn.PReLU(16),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.BatchNorm2d(32),
                nn.PReLU(32),
                nn.AvgPool2d(2),  # 14x14 -> 7x7 (adaptive pooling does not export with a dynamic batch)
            )
            self.fc = nn.Linear(32 * 7 * 7, 512)
            self.features = nn.BatchNorm1d(512)

        def forward(self, x):
            return self.features(self.fc(torch.flatten(self.body(x), 1)))

    model = TinyArcFace().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    dummy = torch.zeros(2, 3, 112, 112)
    # The legacy TorchScript exporter: byte-identical output per seed and ~1 s; it warns that it is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}},
            opset_version=17,
            dynamo=False,
        )
    return path
