"""FLX Engine: local, self-hosted generation of consistent characters.

Nothing happens at import time: settings, devices and models are resolved by the
entry point (CLI, server, job runner) and passed in.
"""

__version__ = "0.1.0"
