"""Runs keep the runner's priority: ``nice tinyattn study`` lowers the priority of every run it starts.

A process started under ``nice`` passes its niceness on to its children, but on Linux the scheduler
first shares the CPU between *autogroups* (one per session) and only then between the processes of a
group. jupyter_client starts each kernel in a session of its own, so a training notebook's kernel gets
an autogroup of its own at niceness 0 and competes with the user's shell as an equal, whatever the
runner's niceness. ``NiceKernelManager`` gives each kernel's autogroup the runner's niceness (never a
higher priority than the kernel had). Where there are no autogroups (another OS, or a kernel built
without them), nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager


def autogroup_file(pid: int) -> Path:
    """Where Linux keeps (and takes) the niceness of the process's autogroup."""
    return Path("/proc") / str(pid) / "autogroup"


def autogroup_nice(pid: int) -> int | None:
    """The niceness of the process's autogroup; None where there is none to read."""
    try:
        return int(autogroup_file(pid).read_text().split("nice")[-1])
    except (OSError, ValueError):
        return None


def follow_niceness(pid: int | None) -> None:
    """Give the autogroup of process ``pid`` this process's niceness, where that lowers its
    priority; a failure to write (no autogroups, another user's process) changes nothing."""
    nice = os.nice(0)
    current = autogroup_nice(pid) if pid else None
    if current is None or nice <= current:
        return
    try:
        autogroup_file(pid).write_text(str(nice))
    except OSError:
        pass


class NiceKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels keep the niceness of the process that starts them (for
    papermill: ``kernel_manager_class=NiceKernelManager``)."""

    async def start_kernel(self, **kw) -> None:
        await super().start_kernel(**kw)
        follow_niceness(getattr(self.provisioner, "pid", None))
