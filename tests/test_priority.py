"""Runs keep the runner's niceness: a kernel's own session (its own Linux autogroup) is niced too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tinyattn.experiment import RunParams
from tinyattn.study import priority, runner

needs_autogroups = pytest.mark.skipif(
    priority.autogroup_nice(os.getpid()) is None
    or not os.access(priority.autogroup_file(os.getpid()), os.W_OK),
    reason="no Linux autogroups this process may set on this machine",
)


def niced_python(code: str, nice: int = 7) -> list[str]:
    """What ``code`` prints, run in a Python process made ``nice`` points nicer first."""
    script = f"import os\nos.nice({nice})\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@needs_autogroups
def test_a_new_session_escapes_nice_until_its_group_follows_and_never_gains_priority():
    nice, fresh, followed, kept = niced_python(
        """
        import subprocess
        from tinyattn.study.priority import autogroup_file, autogroup_nice, follow_niceness
        child = subprocess.Popen(["sleep", "30"], start_new_session=True)
        try:
            fresh = autogroup_nice(child.pid)  # what jupyter_client's kernels get
            follow_niceness(child.pid)
            followed = autogroup_nice(child.pid)
            autogroup_file(child.pid).write_text("19")
            follow_niceness(child.pid)  # already lower: left alone
            print(os.nice(0), fresh, followed, autogroup_nice(child.pid))
        finally:
            child.kill()
        """
    )
    assert int(nice) > 0 and fresh == "0"
    assert followed == nice and kept == "19"


@needs_autogroups
def test_a_kernel_started_under_nice_runs_at_that_niceness():
    nice, kernel = niced_python(
        """
        import asyncio
        from tinyattn.study.priority import NiceKernelManager, autogroup_nice

        async def main():
            manager = NiceKernelManager(kernel_name="python3")
            await manager.start_kernel()
            try:
                print(os.nice(0), autogroup_nice(manager.provisioner.pid))
            finally:
                await manager.shutdown_kernel(now=True)

        asyncio.run(main())
        """
    )
    assert int(nice) > 0 and kernel == nice


def test_the_runners_notebooks_start_their_kernels_niced(monkeypatch, tmp_path):
    import papermill

    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(runner, "EXECUTED_DIR", tmp_path)
    assert runner._run_notebook(RunParams(), runner.TRAIN_NOTEBOOK, "python3") is None
    assert calls[0]["kernel_manager_class"] is priority.NiceKernelManager
