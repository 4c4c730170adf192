"""Stage `validate`: check the raw manifest and media; passed rows, quarantine and report into
`data/validated/<dataset>/`, and the report's counts into `metrics/data/<dataset>.json` (in git, for `dvc metrics`)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from multigeometry.config import Params
from multigeometry.data.manifest import MANIFEST, read_manifest
from multigeometry.data.validation.manifest_suite import run_manifest_suite
from multigeometry.data.validation.media import media_failures
from multigeometry.io import atomic_dir, write_json_atomic
from multigeometry.paths import DATA_DOCS, QUARANTINE, VALIDATION_REPORT, data_report_path, raw_dir, validated_dir

log = logging.getLogger(__name__)

REPORT = VALIDATION_REPORT
COUNTS = ("rows_in", "rows_passed", "rows_quarantined", "quarantined_fraction", "passed_per_split")  # DVC metrics


class ValidationFailed(RuntimeError):
    """Too large a fraction of the dataset was quarantined."""


def validate(params: Params, root: Path = Path(".")) -> Path:
    cfg = params.validate
    source = raw_dir(params, root)
    manifest_path = source / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no raw manifest; run `multigeometry prepare` first")
    frame = read_manifest(manifest_path)
    out = validated_dir(params, root)

    with atomic_dir(out) as staging:
        docs = staging / DATA_DOCS if cfg.data_docs else None
        failures, expectations = run_manifest_suite(frame, source, cfg, docs)
        for index, found in media_failures(frame, source, cfg, params.audio).items():
            failures.setdefault(index, []).extend(found)

        bad = frame.index.isin(list(failures))
        passed = frame[~bad].reset_index(drop=True)
        quarantined = frame[bad].copy()
        quarantined["reasons"] = [sorted({r for r, _ in failures[i]}) for i in quarantined.index]
        quarantined["details"] = ["; ".join(f"{r}: {d}" for r, d in failures[i]) for i in quarantined.index]
        passed.to_parquet(staging / MANIFEST, index=False)
        quarantined.reset_index(drop=True).to_parquet(staging / QUARANTINE, index=False)

        per_reason = Counter(r for reasons in quarantined["reasons"] for r in reasons)
        # each quarantined row once, under its first reason, so that these add up to rows_quarantined
        per_first_reason = Counter(reasons[0] for reasons in quarantined["reasons"])
        fraction = float(bad.mean()) if len(frame) else 0.0
        report = {
            "rows_in": len(frame),
            "rows_passed": len(passed),
            "rows_quarantined": len(quarantined),
            "quarantined_fraction": round(fraction, 6),
            "max_bad_fraction": cfg.max_bad_fraction,
            "per_reason": dict(sorted(per_reason.items())),
            "per_first_reason": dict(sorted(per_first_reason.items())),
            "passed_per_split": _counts(passed["split"]),
            "quarantined_per_split": _counts(quarantined["split"]),
            "expectations": expectations,
            "raw_dir": raw_dir(params).as_posix(),  # relative to the project root: the same in any checkout
        }
        write_json_atomic(staging / REPORT, report)
    write_json_atomic(data_report_path(params, root), {k: report[k] for k in COUNTS})

    log.info("validate: %d rows in, %d passed, %d quarantined", len(frame), len(passed), len(quarantined))
    if len(quarantined):
        log.warning(quarantine_summary(quarantined, len(frame), out / QUARANTINE))
    if fraction > cfg.max_bad_fraction:
        raise ValidationFailed(
            f"{out / QUARANTINE}: {len(quarantined)} of {len(frame)} rows quarantined ({fraction:.1%}), more than "
            f"validate.max_bad_fraction={cfg.max_bad_fraction:.1%}; reasons: {dict(per_reason)}"
        )
    return out


# the params that decide each media check, named in the warning so a user knows what to change
REASON_KNOBS = {
    "audio_sample_rate": "validate.audio_sample_rates, validate.audio_min_sample_rate",
    "audio_duration": "validate.audio_min_seconds, validate.audio_max_seconds",
    "audio_silent": "validate.audio_min_rms",
    "image_too_small": "validate.image_min_side",
    "text_length": "validate.text_min_chars, validate.text_max_chars",
    "video_frames": "validate.video_min_frames, validate.video_max_frames",
    "video_duration": "validate.video_min_seconds, validate.video_max_seconds",
    "video_frame_rate": "validate.video_min_fps, validate.video_max_fps",
    "video_too_small": "validate.video_min_side",
    "video_too_large": "validate.video_max_pixels, validate.video_max_bytes",
}


def quarantine_summary(quarantined: pd.DataFrame, rows_in: int, path: Path) -> str:
    """One line per reason: how many rows, in which splits, and the params that decide it."""
    lines = [f"validate: {len(quarantined)} of {rows_in} rows quarantined ({len(quarantined) / rows_in:.1%}); "
             f"rows and reasons in {path}:"]
    reasons = sorted({r for rs in quarantined["reasons"] for r in rs})
    for reason in reasons:
        rows = quarantined[[reason in rs for rs in quarantined["reasons"]]]
        splits = ", ".join(f"{k} {v}" for k, v in _counts(rows["split"]).items())
        knob = f"; set by {REASON_KNOBS[reason]}" if reason in REASON_KNOBS else ""
        lines.append(f"  {reason}: {len(rows)} ({splits}){knob}")
    return "\n".join(lines)


def _counts(column: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in column.value_counts().sort_index().items()}
