"""Engine settings, read once by the entry point and passed down (never read at import time).

Every path has a documented default under the user's data dir and can be overridden by an
environment variable (prefix `FLX_`) or a CLI flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_ARCHIVE_DAYS = 36500
"""The longest inactivity an archive policy can name (100 years); the one bound for the setting and the flag."""


def _default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("flx-engine", appauthor=False))


def repo_root() -> Path:
    """The source checkout's root (where `configs/` and `weights_manifest.json` live)."""
    return Path(__file__).resolve().parents[2]


class EngineSettings(BaseSettings):
    """Where the engine keeps things and how it runs. Env vars: FLX_HOME, FLX_WEIGHTS_DIR, ..."""

    model_config = SettingsConfigDict(env_prefix="FLX_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=_default_home, description="Root of all engine data (FLX_HOME).")
    weights_dir: Path | None = Field(
        default=None, description="Weights root (FLX_WEIGHTS_DIR). Default: <home>/weights."
    )
    library_path: Path | None = Field(
        default=None, description="SQLite character library (FLX_LIBRARY_PATH). Default: <home>/library.sqlite."
    )
    outputs_dir: Path = Field(default=Path("outputs"), description="Where renders go (FLX_OUTPUTS_DIR).")
    manifest_path: Path = Field(
        default_factory=lambda: repo_root() / "weights_manifest.json",
        description="Weights manifest (FLX_MANIFEST_PATH).",
    )
    presets_dir: Path = Field(
        default_factory=lambda: repo_root() / "configs" / "presets", description="Preset YAML folder."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto", description="Compute device (FLX_DEVICE).")
    allow_unverified_weights: bool = Field(
        default=False, description="Load weights even when they fail verification (FLX_ALLOW_UNVERIFIED_WEIGHTS)."
    )
    archive_after_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ARCHIVE_DAYS,
        description="Archive characters unused this many days (FLX_ARCHIVE_AFTER_DAYS); off when unset (local use).",
    )
    archive_dir: Path | None = Field(
        default=None, description="Where archived .flx files go. Default: <home>/archive."
    )
    offline: bool = Field(default=False, description="Never touch the network (FLX_OFFLINE / HF_HUB_OFFLINE).")
    commercial_use: bool = Field(
        default=False,
        description="Commercial use (FLX_COMMERCIAL_USE, flag --commercial): refuse every component whose licence "
        "excludes commercial use, and run the embedded face backend on its CC0 models only.",
    )
    verify_on_load: Literal["stat", "full"] = Field(
        default="stat",
        description="Before each load (FLX_VERIFY_ON_LOAD): `stat` re-hashes files whose size, mtime, ctime or inode "
        "changed since they were hashed; `full` re-hashes every file of the component (slow for multi-GB models).",
    )

    @field_validator("home", "weights_dir", "library_path", "outputs_dir", "manifest_path", "presets_dir",
                     "archive_dir", mode="before")  # fmt: skip
    @classmethod
    def _no_empty_paths(cls, v):
        # Path("") is "." : an empty --home would silently put the library in the current folder.
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty: give a folder path or leave the setting unset")
        return v

    @field_validator("home", mode="after")
    @classmethod
    def _home_not_a_file(cls, v: Path) -> Path:
        if Path(v).exists() and not Path(v).is_dir():
            raise ValueError(f"{v} is a file, not a folder: point it at a folder (it is created if missing)")
        return v

    @property
    def weights_root(self) -> Path:
        return Path(self.weights_dir) if self.weights_dir else Path(self.home) / "weights"

    @property
    def library_file(self) -> Path:
        return Path(self.library_path) if self.library_path else Path(self.home) / "library.sqlite"
