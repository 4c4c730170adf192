"""Prefect flows and deployments of the pipeline. No stage logic lives here: the flows call
`multigeometry.stages`, as `dvc.yaml` does through the CLI."""
