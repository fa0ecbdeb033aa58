"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) run in PyTorch.

The dlib-bin wheel is built without BLAS, so one `compute_face_descriptor` costs ~120 ms of single-threaded,
GIL-holding work on this kind of machine; the same network in PyTorch costs a few milliseconds. The weights
are read straight from dlib's own `.dat` file (nothing is downloaded or converted on disk), and the
aligned 150x150 chip still comes from dlib (`dlib.get_face_chip`, exactly what `compute_face_descriptor`
extracts), so the vectors equal dlib's to float32 rounding (max abs difference ~1e-6, checked in
tests/scoring).

dlib serialises the network input-side first: each layer as its name string (`con_4`, `affine_`, `relu_110`,
`max_pool_2`, `avg_pool_2`, `add_prev_111`, `fc_2`) followed by its fields; parameter tensors are a
version int, four dims and raw little-endian float32. Integers are dlib's compact encoding: one byte
giving the byte count (bit 7 = negative), then the bytes, little-endian.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

# dlib's input_rgb_image_sized<150>: per-channel mean subtracted, then divided by 256.
_MEAN_RGB = (122.782, 117.001, 104.298)
_CHIP_SIZE, _CHIP_PADDING = 150, 0.25


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def int(self) -> int:
        head = self.data[self.pos]
        size, neg = head & 0x0F, bool(head & 0x80)
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if neg else value

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"unsupported dlib tensor version {version}")
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims))
        arr = np.frombuffer(self.data, dtype="<f4", count=n, offset=self.pos).astype(np.float32)
        self.pos += 4 * n
        return arr

    def seek_layer(self) -> str:
        """Move past the next layer-name string and return it."""
        names = (b"con_", b"affine_", b"relu_", b"max_pool_", b"avg_pool_", b"add_prev_", b"fc_")
        best = None
        end = min(len(self.data), self.pos + 4096)  # names follow the previous layer's few fields closely
        for name in names:
            i = self.data.find(name, self.pos, end)
            if i >= 2 and self.data[i - 2] == 0x01 and (best is None or i < best[0]):
                best = (i, self.data[i - 1])
        if best is None:
            return ""
        i, length = best
        self.pos = i + length
        return self.data[i : i + length].decode()


def _read_layers(path: Path) -> list[tuple[str, dict]]:
    r = _Reader(path.read_bytes())
    if b"loss_metric_" not in r.data[:64] or b"input_rgb_image_sized" not in r.data[:400]:
        raise ValueError(f"{path} is not dlib's metric-learning face recognition network")
    layers = []
    while name := r.seek_layer():
        kind = name.rsplit("_", 1)[0] if name[-1].isdigit() else name.rstrip("_")
        if kind == "con":
            params = r.tensor()
            nf, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
            layers.append((kind, {"params": params, "out": nf, "k": (kh, kw), "stride": (sy, sx), "pad": (py, px)}))
        elif kind == "affine":
            layers.append((kind, {"params": r.tensor()}))
        elif kind in ("max_pool", "avg_pool"):
            kh, kw, sy, sx, py, px = (r.int() for _ in range(6))
            layers.append((kind, {"k": (kh, kw), "stride": (sy, sx), "pad": (py, px)}))
        elif kind == "fc":
            n_out, n_in = r.int(), r.int()
            layers.append((kind, {"params": r.tensor(), "out": n_out, "inp": n_in}))
        else:
            layers.append((kind, {}))
    return layers


def _build(layers: list[tuple[str, dict]]):
    """A torch module for the layer list: stem (con, affine, relu, max_pool), residual blocks
    (con, affine, relu, con, affine, [avg_pool], add_prev, relu), global avg_pool, fc."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv(spec, n_in):
        c = nn.Conv2d(n_in, spec["out"], spec["k"], spec["stride"], spec["pad"], bias=True)
        n_w = spec["out"] * n_in * spec["k"][0] * spec["k"][1]
        if spec["params"].size != n_w + spec["out"]:
            raise ValueError("unexpected dlib conv parameter count")
        c.weight.data = torch.from_numpy(spec["params"][:n_w].reshape(c.weight.shape).copy())
        c.bias.data = torch.from_numpy(spec["params"][n_w:].copy())
        return c

    def affine(spec):
        p = torch.from_numpy(spec["params"].copy())
        k = p.numel() // 2
        return p[:k].view(1, k, 1, 1), p[k:].view(1, k, 1, 1)

    def add_padded(a, b):  # dlib add_prev: shapes may differ; the sum takes the max shape, zero-filled
        k, h, w = max(a.shape[1], b.shape[1]), max(a.shape[2], b.shape[2]), max(a.shape[3], b.shape[3])
        pad = lambda t: F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, k - t.shape[1]))
        return pad(a) + pad(b)

    class DlibResNet(nn.Module):
        def __init__(self):
            super().__init__()
            kinds = [k for k, _ in layers]
            it = iter(layers)
            n_in = 3
            c, a, _r, mp = next(it), next(it), next(it), next(it)
            if kinds[:4] != ["con", "affine", "relu", "max_pool"]:
                raise ValueError("unexpected dlib network stem")
            self.stem = conv(c[1], n_in)
            g, b = affine(a[1])
            self.register_buffer("stem_g", g)
            self.register_buffer("stem_b", b)
            self.pool = mp[1]
            n_in = c[1]["out"]
            self.convs = nn.ModuleList()
            self.blocks: list[bool] = []  # per block: shortcut is avg-pooled (stride-2 block)
            rest = list(it)
            i = 0
            while rest[i][0] == "con":
                seq = [k for k, _ in rest[i : i + 8]]
                down = seq[5] == "avg_pool"
                want = (
                    ["con", "affine", "relu", "con", "affine"] + (["avg_pool"] if down else []) + ["add_prev", "relu"]
                )
                if seq[: len(want)] != want:
                    raise ValueError(f"unexpected dlib residual block {seq}")
                c1, a1, c2, a2 = rest[i][1], rest[i + 1][1], rest[i + 3][1], rest[i + 4][1]
                self.convs.append(conv(c1, n_in))
                self.convs.append(conv(c2, c1["out"]))
                for j, spec in enumerate((a1, a2)):
                    g, b = affine(spec)
                    self.register_buffer(f"g{len(self.blocks)}_{j}", g)
                    self.register_buffer(f"b{len(self.blocks)}_{j}", b)
                if down and (
                    rest[i + 5][1]["k"] != (2, 2) or rest[i + 5][1]["stride"] != (2, 2) or any(rest[i + 5][1]["pad"])
                ):
                    raise ValueError("unexpected dlib shortcut pooling")
                self.blocks.append(down)
                n_in = c2["out"]
                i += len(want)
            if [k for k, _ in rest[i:]] != ["avg_pool", "fc"] or rest[i][1]["k"] != (0, 0):
                raise ValueError("unexpected dlib network head")
            fc = rest[i + 1][1]
            self.fc = nn.Linear(fc["inp"], fc["out"], bias=False)
            self.fc.weight.data = torch.from_numpy(fc["params"].reshape(fc["inp"], fc["out"]).T.copy())
            self.register_buffer("mean", torch.tensor(_MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, chips: torch.Tensor) -> torch.Tensor:
            """chips: (B, 150, 150, 3) uint8 RGB -> (B, 128) float32."""
            x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
            x = F.relu(self.stem(x) * self.stem_g + self.stem_b)
            x = F.max_pool2d(x, self.pool["k"], self.pool["stride"], self.pool["pad"])
            for n, down in enumerate(self.blocks):
                y = self.convs[2 * n](x)
                y = F.relu(y * getattr(self, f"g{n}_0") + getattr(self, f"b{n}_0"))
                y = self.convs[2 * n + 1](y) * getattr(self, f"g{n}_1") + getattr(self, f"b{n}_1")
                short = F.avg_pool2d(x, 2, 2) if down else x
                x = F.relu(add_padded(short, y))
            return self.fc(x.mean(dim=(2, 3)))

    return DlibResNet().eval()


_CACHE: dict[str, object] = {}
_LOCK = threading.Lock()


def load_dlib_resnet(path: str | Path):
    """The network in `path` as an eval-mode torch module (cached per path for the process)."""
    key = str(Path(path).resolve())
    with _LOCK:
        if key not in _CACHE:
            try:
                _CACHE[key] = _build(_read_layers(Path(path)))
            except (IndexError, KeyError, StopIteration) as e:  # truncated or foreign file
                raise ValueError(f"{path} is not a readable dlib face recognition network ({e!r})") from None
        return _CACHE[key]


class TorchDlibEmbedder:
    """Embeds faces for a `DlibFaceAnalyzer` with the network in PyTorch: same vectors, ~8x faster.

    Uses the analyzer's own 5-point predictor and dlib's chip extraction, so only the network changes.
    """

    def __init__(self, analyzer):
        self.analyzer = analyzer
        models_dir = analyzer.models_dir
        if models_dir is None:
            from engine.identity.dlib_backend import face_recognition_models_dir

            models_dir = face_recognition_models_dir()
        self.net = load_dlib_resnet(Path(models_dir) / "dlib_face_recognition_resnet_model_v1.dat")

    @staticmethod
    def supports(analyzer) -> bool:
        """Only dlib analyzers embedding with one jitter (the network output, no random crops)."""
        from engine.identity.dlib_backend import DLIB_ENCODER_ID

        info = getattr(analyzer, "info", None)
        return (
            info is not None
            and info.encoder_id == DLIB_ENCODER_ID
            and getattr(analyzer, "num_jitters", None) == 1
            and hasattr(analyzer, "models")
            and hasattr(analyzer, "models_dir")
        )

    def chips(self, image: np.ndarray, faces) -> list[np.ndarray]:
        """dlib's aligned 150x150 chips (5-point shape on the detector box), as `compute_face_descriptor` makes."""
        import dlib

        m = self.analyzer.models
        out = []
        for face in faces:
            x0, y0, x1, y1 = face.extra.get("raw_box") or tuple(round(v) for v in face.box)
            shape = m.sp5(image, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
            out.append(np.asarray(dlib.get_face_chip(image, shape, size=_CHIP_SIZE, padding=_CHIP_PADDING)))
        return out

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        """(n, 128) vectors for 150x150 RGB chips, on torch's own thread setting (never changed here: it is
        process-wide, and a server runs many of these at once)."""
        import torch

        if not chips:
            return np.zeros((0, 128), np.float32)
        with torch.inference_mode():
            return self.net(torch.from_numpy(np.stack(chips))).numpy()

    def embed(self, image: np.ndarray, faces) -> list:
        """Fill `embedding` / `encoder_id` of each face, like `DlibFaceAnalyzer.embed`."""
        faces = list(faces)
        vecs = self.embed_chips(self.chips(image, faces))
        for face, v in zip(faces, vecs):
            face.embedding = np.asarray(v, dtype=np.float32)
            face.encoder_id = self.analyzer.info.encoder_id
        return faces
