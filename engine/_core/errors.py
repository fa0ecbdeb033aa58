"""Error hierarchy. Every user-facing failure is an `EngineError` with a message that names
the problem and the fix; the CLI maps it to one coloured line and an exit code (cli/errors.py)."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose. `exit_code` is used by the CLI."""

    exit_code = 1


class InputError(EngineError, ValueError):
    """The user gave something we cannot use (bad flag, unreadable file, wrong shape)."""

    exit_code = 2


class ConfigError(InputError):
    """A config/preset/manifest file is invalid. The message names the file and key."""


class ModelNotFound(EngineError):
    """A weights component is not present on disk."""

    exit_code = 3


class WeightsIntegrityError(EngineError):
    """Files on disk do not match the lock (tampered, truncated, or partially downloaded)."""

    exit_code = 4


class NetworkUnavailable(EngineError):
    """A download was asked for but the hub cannot be reached."""

    exit_code = 5


class DeviceError(EngineError):
    """The requested device (e.g. CUDA) is not available on this machine."""

    exit_code = 6


class OutputError(EngineError):
    """An output location cannot be written."""

    exit_code = 7


class FaceNotFound(InputError):
    """No usable face in an image where one is required."""


class AmbiguousFace(InputError):
    """Several faces where one is required; the message lists them and asks for `--face N`."""


class CharacterNotFound(EngineError):
    """No character with that name or id in the library."""

    exit_code = 3


class CharacterFileError(InputError):
    """A `.flx` file is malformed, truncated, tampered or from an unsupported major version."""


class JobCancelled(EngineError):
    """A running job was cancelled by the user."""

    exit_code = 130


class LicenseRefused(EngineError):
    """Commercial mode is on and a component's licence excludes commercial use. The message names both."""

    exit_code = 8


class ScoreBelowMinimum(EngineError):
    """A consistency score under the threshold the user set (`--min-score`): a verdict, not a malfunction."""

    exit_code = 1


class DamagedMedia(EngineError):
    """Media decoded only in part (corrupt or truncated) where whole media are required (`--min-score`)."""

    exit_code = 9


class EngineWarning(UserWarning):
    """Something the user should see but that does not stop the work (the CLI prints it as one yellow line)."""


class UnverifiedWeightsWarning(EngineWarning):
    """Weights that failed verification were loaded because --allow-unverified was given."""
