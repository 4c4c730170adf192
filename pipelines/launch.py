"""The train stage as the flow runs it: the same command as dvc.yaml's (`torchrun --standalone --nproc-per-node=N -m
multigeometry train`) in a subprocess, or `orchestration.launcher` for several nodes."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from multigeometry.config import Params

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The training command exited with an error."""


def _torchrun() -> str:
    beside = Path(sys.executable).parent / "torchrun"  # the venv's, as `make run` puts it first on PATH
    return str(beside) if beside.is_file() else (shutil.which("torchrun") or "torchrun")


def train_command(params: Params, params_file: Path, overrides: Sequence[str]) -> list[str]:
    args = ["-m", "multigeometry", "train", "--params", str(Path(params_file).resolve())]
    for override in overrides:
        args += ["--set", override]
    launcher = params.orchestration.launcher
    if launcher:
        return shlex.split(launcher.format(nproc=params.train.nproc, args=shlex.join(args)))
    return [_torchrun(), "--standalone", f"--nproc-per-node={params.train.nproc}", *args]


def run_train(params: Params, params_file: Path, overrides: Sequence[str], root: Path) -> None:
    """Run training in `root` (the stage's project root); its output goes to the log, and to the error on failure."""
    command = train_command(params, params_file, overrides)
    log.info("train: %s (in %s)", shlex.join(command), root)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        log.debug("train | %s", line)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).splitlines()
        # the CLI's own one-line error ("multigeometry train: ParamsError: ...") says why; torchrun's traceback does not
        cause = [line for line in lines if line.startswith("multigeometry train:")] or lines[-30:]
        raise LaunchError(f"`{shlex.join(command)}` exited with {done.returncode}: " + "\n".join(cause))
