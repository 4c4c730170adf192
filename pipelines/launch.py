"""The train and evaluate stages as the flow runs them: the same commands as dvc.yaml's (`torchrun --standalone
--nproc-per-node=N -m multigeometry train|evaluate`, N from `train.nproc` or `eval.nproc`) in a subprocess, or
`orchestration.launcher` for several nodes."""

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
    """A launched stage's command exited with an error."""


def nproc(stage: str, params: Params) -> int:
    """Processes per node of a stage run under torchrun (`train.nproc`, `eval.nproc`)."""
    per_stage = {"train": params.train.nproc, "evaluate": params.eval.nproc}
    if stage not in per_stage:
        raise ValueError(f"stage {stage!r} is not launched under torchrun; launched: {', '.join(per_stage)}")
    return per_stage[stage]


def _torchrun() -> str:
    beside = Path(sys.executable).parent / "torchrun"  # the venv's, as `make run` puts it first on PATH
    return str(beside) if beside.is_file() else (shutil.which("torchrun") or "torchrun")


def stage_command(stage: str, params: Params, params_file: Path, overrides: Sequence[str]) -> list[str]:
    args = ["-m", "multigeometry", stage, "--params", str(Path(params_file).resolve())]
    for override in overrides:
        args += ["--set", override]
    launcher = params.orchestration.launcher
    if launcher:
        return shlex.split(launcher.format(nproc=nproc(stage, params), args=shlex.join(args)))
    return [_torchrun(), "--standalone", f"--nproc-per-node={nproc(stage, params)}", *args]


def run_stage(stage: str, params: Params, params_file: Path, overrides: Sequence[str], root: Path) -> None:
    """Run `stage` in `root` (the project root); its output goes to the log, and to the error on failure."""
    command = stage_command(stage, params, params_file, overrides)
    log.info("%s: %s (in %s)", stage, shlex.join(command), root)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        log.debug("%s | %s", stage, line)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).splitlines()
        # the CLI's own one-line error ("multigeometry train: ParamsError: ...") says why; torchrun's traceback does not
        cause = [line for line in lines if line.startswith(f"multigeometry {stage}:")] or lines[-30:]
        raise LaunchError(f"`{shlex.join(command)}` exited with {done.returncode}: " + "\n".join(cause))
