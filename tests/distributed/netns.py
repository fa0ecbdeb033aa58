"""A private network namespace with only loopback up, for tests that start a Ray cluster.

Ray listens on every interface and advertises the machine's own address, so a test cluster started in the host's
namespace is reachable from the network (and talks to it). Inside a fresh namespace whose only interface is `lo`,
no packet can leave the machine: the driver script asserts that before it starts Ray. Everything started in the
namespace is stopped by its own pids (`ip netns pids`), never by name (`ray stop` ends every Ray process on the
machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

PREFIX = "flx-test-"


class NetnsUnavailable(RuntimeError):
    """A network namespace cannot be made here (not root, no iproute2, no CAP_SYS_ADMIN in a container)."""


def unavailable_reason() -> str | None:
    """Why a private namespace cannot be made here, or None."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating a network namespace (`ip netns add`) needs root; CI runs as root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed: apt-get install iproute2"
    return None


def namespace_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def stop_namespace_processes(name: str, timeout_s: float = 15.0) -> list[int]:
    """SIGKILL every process in the namespace (only what the test started lives there). Returns their pids."""
    pids = namespace_pids(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def _remove_stale() -> None:
    """Namespaces left by a test process that was killed (its pid is in the name and no longer runs)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not _alive(int(owner)):
            stop_namespace_processes(name)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@contextlib.contextmanager
def private_netns() -> Iterator[str]:
    """A fresh named namespace with `lo` up; on exit its processes are killed by pid and it is deleted."""
    reason = unavailable_reason()
    if reason:
        raise NetnsUnavailable(reason)
    _remove_stale()
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` failed: {made.stderr.strip() or made.returncode}")
    try:
        up = subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], capture_output=True, text=True, check=False
        )
        if up.returncode != 0:
            raise NetnsUnavailable(f"cannot bring up lo in the namespace: {up.stderr.strip()}")
        yield name
    finally:
        stop_namespace_processes(name)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def run_in_netns(
    name: str, argv: list[str], *, env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside the namespace (and wait for it)."""
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
