"""The Great Expectations suite over a raw manifest, run in an ephemeral context; rows that fail are returned by
index with the reason of each failed expectation, and GX's HTML data docs are written where asked.

GX checks columns, not the file system, so two derived columns carry what it cannot see: whether a media path
names an existing file inside the dataset folder, and whether a sample id repeats an earlier one (only the repeats are
quarantined, never the first occurrence).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from multigeometry.config import MODALITIES, SPLITS, ValidateConfig
from multigeometry.data.manifest import ambiguity_problem
from multigeometry.data.validation.media import Failure, resolve_media

log = logging.getLogger(__name__)

FILE_MODALITIES = ("image", "audio", "code", "video")  # the manifest columns that name files


def _with_derived_columns(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    derived = frame[["sample_id", "group_id", "split", *MODALITIES]].copy()
    derived["repeats_sample_id"] = frame["sample_id"].duplicated(keep="first") & frame["sample_id"].notna()
    for modality in FILE_MODALITIES:
        derived[f"{modality}_file_exists"] = [
            True if not isinstance(p, str) else bool((path := resolve_media(root, p)) and path.is_file())
            for p in frame[modality]
        ]
    derived["text_chars"] = frame["text"].map(lambda t: len(t) if isinstance(t, str) else None)
    derived["ambiguity_valid"] = frame["ambiguity"].map(lambda cell: ambiguity_problem(cell) is None)
    return derived


def _expectations(cfg: ValidateConfig) -> list:
    import great_expectations.expectations as gxe

    def meta(reason: str) -> dict:
        return {"reason": reason}

    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="sample_id", meta=meta("sample_id_missing")),
        gxe.ExpectColumnValuesToBeInSet(
            column="repeats_sample_id", value_set=[False], meta=meta("duplicate_sample_id")
        ),
        gxe.ExpectColumnValuesToBeInSet(  # severities in [0, 1] per modality (the uncertainty metrics' ground truth)
            column="ambiguity_valid", value_set=[True], meta=meta("ambiguity_invalid")
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="group_id", meta=meta("group_id_missing")),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS), meta=meta("unknown_split")),
        gxe.ExpectColumnValuesToNotBeNull(column="split", meta=meta("unknown_split")),
        gxe.ExpectColumnValuesToBeBetween(
            column="text_chars",
            min_value=cfg.text_min_chars,
            max_value=cfg.text_max_chars,
            meta=meta("text_length"),
        ),
    ]
    for modality in FILE_MODALITIES:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=f"{modality}_file_exists", value_set=[True], meta=meta(f"{modality}_file_missing")
            )
        )
    for modality in cfg.modalities:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=modality, meta=meta(f"{modality}_missing")))
    return expectations


def run_manifest_suite(
    frame: pd.DataFrame, root: Path, cfg: ValidateConfig, docs_dir: Path | None = None
) -> tuple[dict[object, list[Failure]], list[dict]]:
    """Run the suite; return failures by row index and a summary line per expectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    derived = _with_derived_columns(frame.reset_index(drop=True), root)
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("manifest").add_dataframe_asset("rows")
    batch = asset.add_batch_definition_whole_dataframe("all_rows")
    suite = gx.ExpectationSuite(name="manifest")
    for expectation in _expectations(cfg):
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="manifest", data=batch, suite=suite))
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="local",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=["local"]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="manifest",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": derived})

    index = list(frame.index)
    failures: dict[object, list[Failure]] = {}
    summary = []
    for run in result.run_results.values():
        for outcome in run.results:
            config = outcome.expectation_config
            reason = config.meta["reason"]
            column = config.kwargs.get("column")
            bad = outcome.result.get("unexpected_index_list") or []
            summary.append(
                {
                    "expectation": config.type,
                    "column": column,
                    "reason": reason,
                    "success": bool(outcome.success),
                    "unexpected": len(bad),
                }
            )
            for position in bad:
                value = derived.iloc[position][column]
                failures.setdefault(index[position], []).append((reason, f"{column}={value!r}"))
    return failures, summary
