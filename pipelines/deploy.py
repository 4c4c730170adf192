"""Create the deployments of prefect.yaml (schedule, parameters, work pool) on a Prefect server, or serve them.

    python -m pipelines.deploy            # create/update them on $PREFECT_API_URL; a process worker runs them
    python -m pipelines.deploy --serve    # or run them from this process, no work pool or worker needed

Every deployment gets one pull step, `set_working_directory` to this project folder (absolute), so a process worker
runs its flows here: outputs land in the project's data/ and mlflow.db. Without a pull step the worker would copy the
deployment's folder (the .venv included) into a temporary directory, run there and delete it. `prefect deploy --all`
reads the same prefect.yaml and records the folder it ran in the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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


def pull_steps(project: Path) -> list[dict[str, Any]]:
    """The one pull step of every deployment: run in the project folder itself."""
    return [{"prefect.deployments.steps.set_working_directory": {"directory": str(Path(project).resolve())}}]


@dataclass(frozen=True)
class Applied:
    """What `apply` did to one deployment, as `python -m pipelines.deploy` reports it."""

    name: str  # flow/deployment
    id: str
    created: bool  # False: an existing deployment was updated
    schedules: tuple[str, ...]
    work_pool: str | None
    pool_exists: bool
    directory: str

    def describe(self) -> str:
        when = "; ".join(self.schedules) or "no schedule (runs when triggered)"
        pool = self.work_pool or "none"
        if self.work_pool and not self.pool_exists:
            pool += f" (missing: `prefect work-pool create {self.work_pool} --type process`)"
        return (f"{'created' if self.created else 'updated'} deployment {self.name} ({self.id}): {when}; "
                f"work pool {pool}; runs in {self.directory}")


def _describe_schedule(schedule: Any) -> str:
    inner = schedule.schedule
    what = (f"cron '{inner.cron}' ({inner.timezone or 'UTC'})" if hasattr(inner, "cron")
            else f"every {inner.interval}" if hasattr(inner, "interval") else str(inner))
    return what if schedule.active else f"{what}, inactive"


async def apply(spec: dict[str, Any], project: Path = PROJECT) -> Applied:
    """Create or update one deployment of prefect.yaml on the server of PREFECT_API_URL, running in `project`."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deployment = to_deployment(spec, project)
    name = f"{deployment.flow_name}/{deployment.name}"
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(name)
            created = False
        except ObjectNotFound:
            created = True
        pool_exists = True
        if deployment.work_pool_name:
            try:
                await client.read_work_pool(deployment.work_pool_name)
            except ObjectNotFound:
                pool_exists = False
        flow_id = await client.create_flow_from_name(deployment.flow_name)
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=deployment.name, description=deployment.description,
            schedules=deployment.schedules, parameters=deployment.parameters,
            work_pool_name=deployment.work_pool_name, work_queue_name=deployment.work_queue_name,
            job_variables=deployment.job_variables, entrypoint=deployment.entrypoint, path=None,
            pull_steps=pull_steps(project),
            parameter_openapi_schema=deployment._parameter_openapi_schema.model_dump(exclude_unset=True),
            enforce_parameter_schema=deployment.enforce_parameter_schema,
        )
        stored = await client.read_deployment(deployment_id)
    return Applied(name, str(deployment_id), created, tuple(_describe_schedule(s) for s in stored.schedules),
                   stored.work_pool_name, pool_exists, str(Path(project).resolve()))


async def apply_all(specs: Sequence[dict[str, Any]], project: Path = PROJECT) -> list[Applied]:
    return [await apply(spec, project) for spec in specs]


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
    for applied in asyncio.run(apply_all(specs, project)):
        sys.stdout.write(applied.describe() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
