"""What this machine can run: Python, torch/CUDA/VRAM, xformers, onnxruntime providers, video
I/O, writable folders, and which presets have their weights present and verified."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine._core.settings import EngineSettings


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str


@dataclass
class PresetReadiness:
    name: str
    task: str
    runnable: bool
    reason: str
    components: list[str] = field(default_factory=list)
    commercial_ok: bool = True  # every component's licence allows commercial use
    non_commercial: list[str] = field(default_factory=list)  # the components whose licence does not


@dataclass
class DoctorReport:
    checks: list[Check]
    presets: list[PresetReadiness]
    weights_root: Path

    def preset(self, name: str) -> PresetReadiness | None:
        return next((p for p in self.presets if p.name == name), None)


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def system_checks(settings: EngineSettings) -> list[Check]:
    checks = [Check("python", "ok" if sys.version_info >= (3, 11) else "fail", platform.python_version())]
    import torch

    checks.append(Check("torch", "ok", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            name = torch.cuda.get_device_name(i)
            checks.append(Check(f"cuda:{i}", "ok", f"{name}, {free / 2**30:.1f} / {total / 2**30:.1f} GiB free"))
    else:
        checks.append(
            Check("cuda", "info", "no CUDA device: CPU only (tiny presets run; real presets need a CUDA workstation)")
        )
    xf = importlib.util.find_spec("xformers") is not None
    checks.append(
        Check(
            "xformers", "ok" if xf else "info", _version("xformers") or "not installed: PyTorch SDPA attention is used"
        )
    )
    try:
        import onnxruntime as ort

        provs = ort.get_available_providers()
        checks.append(Check("onnxruntime", "ok", f"{ort.__version__}: {', '.join(provs)}"))
    except ImportError:
        checks.append(Check("onnxruntime", "fail", "not installed: needed for the ArcFace (insightface) backend"))
    for pkg in ("diffusers", "transformers", "accelerate", "peft", "insightface", "dlib-bin"):
        v = _version(pkg)
        checks.append(Check(pkg, "ok" if v else "fail", v or "not installed"))
    try:
        import av

        codecs = av.codecs_available
        checks.append(
            Check(
                "video (PyAV)",
                "ok" if "libx264" in codecs else "warn",
                f"av {av.__version__}, libx264 {'present' if 'libx264' in codecs else 'missing'}",
            )
        )
    except ImportError:
        checks.append(Check("video (PyAV)", "fail", "av not installed"))
    fr = importlib.util.find_spec("face_recognition_models")
    checks.append(
        Check(
            "dlib face models",
            "ok" if fr else "fail",
            "face-recognition-models installed" if fr else "pip install face-recognition-models",
        )
    )
    if settings.commercial_use:
        checks.append(
            Check(
                "licence mode",
                "info",
                "commercial use: non-commercial components are refused; dlib face backend on its CC0 models only "
                "(HOG detector, 5-point landmarks, ResNet encoder)",
            )
        )
    else:
        checks.append(
            Check(
                "licence mode",
                "info",
                "non-commercial use allowed (--commercial / FLX_COMMERCIAL_USE=1 refuses non-commercial components)",
            )
        )
    for label, path in (
        ("home", settings.home),
        ("weights root", settings.weights_root),
        ("outputs", settings.outputs_dir),
    ):
        checks.append(_writable(label, Path(path)))
    return checks


def _writable(label: str, path: Path) -> Check:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    ok = os.access(probe, os.W_OK)
    return Check(f"{label} dir", "ok" if ok else "fail", f"{path}" + ("" if ok else " is not writable"))


# Presets needing more than this much VRAM are real models: on a CPU they would take hours, so
# doctor reports them as needing a CUDA workstation rather than "runnable".
CPU_MAX_PRESET_GB = 1.0


def preset_readiness(settings: EngineSettings, store=None) -> list[PresetReadiness]:
    """For each preset: are all its components present and verified, and does the device suffice?"""
    from engine.models.store import WeightsStore
    from engine.presets import check_components, list_presets, load_preset
    from engine.runtime import plan_runtime, probe_device

    store = store or WeightsStore(settings)
    info = probe_device()
    out = []
    from engine._core.errors import EngineError
    from engine.pipelines.loading import IDENTITY_NOT_WIRED

    for name in list_presets(settings.presets_dir):
        try:
            preset = load_preset(name, settings.presets_dir)
            check_components(preset, store.manifest)
        except EngineError as e:  # one broken preset file is one row, not a failed doctor
            out.append(PresetReadiness(name, "?", False, f"invalid: {e}"))
            continue
        ids = list(preset.components.ids().values())
        reasons = []
        nc = [cid for cid in ids if not store.manifest.get(cid).license.commercial_use]
        if nc and settings.commercial_use:
            reasons.append(f"licence excludes commercial use ({', '.join(nc)})")
        if preset.pipeline in IDENTITY_NOT_WIRED:
            reasons.append("identity conditioning not in the render path yet (Stills issue)")
        for cid in ids:
            st = store.status(cid)
            if not st.ok:
                reasons.append(f"{cid} {st.state}")
        if not info.cuda_available and preset.vram_gb > CPU_MAX_PRESET_GB:
            reasons.append(f"needs a CUDA GPU (~{preset.vram_gb:g} GB VRAM)")
        plan_note = ""
        if not reasons and info.cuda_available:
            plan_note = plan_runtime(preset.vram_gb, device_info=info).reason
        out.append(
            PresetReadiness(
                preset.name,
                preset.task,
                not reasons,
                "; ".join(reasons) or plan_note or "ready",
                ids,
                commercial_ok=not nc,
                non_commercial=nc,
            )
        )
    return out


def run_doctor(settings: EngineSettings) -> DoctorReport:
    return DoctorReport(system_checks(settings), preset_readiness(settings), settings.weights_root)
