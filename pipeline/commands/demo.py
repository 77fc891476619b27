"""``cohortnet demo``: write the synthetic demo cohort and run ``workflows/demo.yaml`` on it."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.commands import add_set_argument
from pipeline.schema import PATIENT_ID

log = logging.getLogger("pipeline")

_REPO = Path(__file__).resolve().parents[2]


def _default(relative: str) -> Path:
    """Prefer the current folder (a checkout), else the checkout this package was installed from."""
    here = Path(relative)
    return here if here.exists() or (Path.cwd() / "pyproject.toml").is_file() else _REPO / relative


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow", type=Path, default=None, help="default: workflows/demo.yaml")
    parser.add_argument("--patients", type=int, default=100, help="number of patients (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--no-run", action="store_true", help="only write the cohort and its manifest")
    parser.add_argument("--pdf", action="store_true", help="also print the report to report.pdf (headless Chromium)")
    add_set_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import read_workflow
    from pipeline.errors import ValidationError
    from pipeline.synthetic import CohortSpec, make_demo_cohort

    workflow = args.workflow or _default("workflows/demo.yaml")
    if args.patients < 10:
        raise ValidationError([f"--patients must be at least 10, got {args.patients}"], "command line")
    raw = read_workflow(workflow, args.overrides)  # --set manifest=... moves the cohort too
    named = raw.get("manifest", "../data_manifests/demo.csv")
    if not isinstance(named, str) or not named.strip():
        raise ValidationError([f"{workflow}: manifest must be a file name, got {named!r}"], "workflow")
    # the cohort goes where the workflow reads it; a manifest the generator did not write is refused
    manifest = (workflow.parent / named).resolve()
    start = time.perf_counter()
    spec = CohortSpec(n_patients=args.patients, seed=args.seed)
    table = make_demo_cohort(manifest.parent / manifest.stem, manifest, spec)
    log.info(
        "demo cohort: %d patients, %d images (%d DICOM series, %d NIfTI) in %.1fs -> %s",
        table[PATIENT_ID].nunique(),
        len(table),
        int((~table["image"].str.endswith(".nii.gz")).sum()),
        int(table["image"].str.endswith(".nii.gz").sum()),
        time.perf_counter() - start,
        manifest,
    )
    if args.no_run:
        print(f"manifest: {manifest}")
        return 0
    from pipeline.study import run_study, validate_workflow

    if args.pdf:
        from pipeline.reporting.pdf import find_browser

        find_browser()  # before the study, so a missing browser costs nothing
    cfg, cohort = validate_workflow(workflow, args.overrides)
    result = run_study(cfg, cohort)
    if not result.metrics:  # a torchrun rank other than 0: rank 0 reports
        return 0
    total = time.perf_counter() - start
    m = result.metrics
    print(
        f"demo: {m['n_patients']} patients, {len(cohort.table)} images; study {result.seconds:.0f} s, "
        f"total {total:.0f} s ({total / 60:.1f} min)"
    )
    print(f"pooled out-of-fold per-patient AUC {m['auc']:.3f} [95% CI {m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]")
    print(f"report: {result.report}")
    if args.pdf:
        from pipeline.reporting.pdf import write_pdf
        from pipeline.schema import PDF_FILE

        print(f"pdf: {write_pdf(result.report, result.report.with_name(PDF_FILE))}")
    return 0
