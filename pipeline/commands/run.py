"""``cohortnet run WORKFLOW.yaml [--set key=value ...]``: run a study."""

from __future__ import annotations

import argparse
import logging

from pipeline.commands import add_set_argument
from pipeline.schema import PATIENT_ID

log = logging.getLogger("pipeline")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="workflow YAML (see workflows/ and README.md)")
    add_set_argument(parser)
    parser.add_argument(
        "--run-id",
        help="name of the run folder (default: the start time); an existing "
        "run folder of the same name is resumed, skipping finished folds",
    )
    parser.add_argument("--check", action="store_true", help="validate workflow and manifest, then stop")
    parser.add_argument(
        "--dask",
        metavar="SCHEDULER",
        help="train the folds as tasks on a dask.distributed cluster: local, local:N or a scheduler address",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.study import check_start, run_study, validate_workflow

    cfg, cohort = validate_workflow(args.workflow, args.overrides)
    n_patients = cohort.table[PATIENT_ID].nunique()
    log.info("workflow %s is valid: %d images of %d patients", args.workflow, len(cohort.table), n_patients)
    if args.check:
        check_start(cfg, args.run_id)  # the run id and the device, as the run would refuse them
        if args.dask:  # a bad --dask value, or a scheduler that does not answer (run_study checks it too)
            from pipeline.fanout import check_scheduler

            check_scheduler(args.dask)
        return 0
    result = run_study(cfg, cohort, run_id=args.run_id, dask=args.dask)
    if not result.metrics:  # a torchrun rank other than 0: rank 0 reports
        return 0
    m = result.metrics
    print(
        f"per-patient AUC {m['auc']:.3f} [95% CI {m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}] "
        f"({m.get('ci_method')}) on {m['n_patients']} patients; {result.seconds:.0f} s"
    )
    print(f"report: {result.report}")
    return 0
