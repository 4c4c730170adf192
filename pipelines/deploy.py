"""Create the deployments of prefect.yaml (schedule, parameters, work pool) through Prefect's Python API, or serve them.

    python -m pipelines.deploy            # create/update them on $PREFECT_API_URL; a process worker runs them
    python -m pipelines.deploy --serve    # or run them from this process, no work pool or worker needed

prefect.yaml stays the one description; `prefect deploy --all` reads it too, but with Prefect 3.8.8 against FastAPI
0.154 that command fails after creating the first deployment (its check for online workers sends `limit: null`,
which the server refuses with 422), so this module is the way that works here.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron

PROJECT = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT / "prefect.yaml"

log = logging.getLogger(__name__)


def read_deployments(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    try:
        deployments = yaml.safe_load(Path(path).read_text())["deployments"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no `deployments:` list ({type(e).__name__}: {e})") from e
    for i, spec in enumerate(deployments):
        missing = {"name", "entrypoint"} - set(spec)
        if missing:
            raise ValueError(f"{path}: deployments[{i}] lacks {', '.join(sorted(missing))}")
    return deployments


def to_deployment(spec: dict[str, Any], project: Path = PROJECT, *, with_pool: bool = True) -> RunnerDeployment:
    """One prefect.yaml entry as a RunnerDeployment whose runs work in `project`."""
    flow = load_flow_from_entrypoint(str(project / spec["entrypoint"]))
    pool = spec.get("work_pool") or {}
    schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
                 for s in spec.get("schedules") or []]
    deployment = RunnerDeployment.from_flow(
        flow, name=spec["name"], description=spec.get("description"), schedules=schedules or None,
        parameters=spec.get("parameters") or {},
        work_pool_name=pool.get("name") if with_pool else None,
        work_queue_name=pool.get("work_queue_name") if with_pool else None,
        job_variables=pool.get("job_variables") if with_pool else None,
    )
    deployment._path = str(project)  # the working directory of its runs
    deployment.entrypoint = spec["entrypoint"]
    return deployment


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_YAML)
    parser.add_argument("--serve", action="store_true", help="serve the deployments from this process (no worker)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    project = args.prefect_file.resolve().parent
    specs = read_deployments(args.prefect_file)
    if args.serve:
        from prefect import serve

        serve(*[to_deployment(s, project, with_pool=False) for s in specs])
        return 0
    for spec in specs:
        deployment_id = to_deployment(spec, project).apply()
        log.info("deployment %s/%s: %s", spec["entrypoint"].rsplit(":", 1)[1], spec["name"], deployment_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
