"""Column and file names shared across stages: each name is defined here once.

These are contracts (README.md, "Manifest" and "Outputs"): other tools and people read these
files, so a name changes only on purpose.
"""

from __future__ import annotations

# Manifest: one row per image (a NIfTI file, a single DICOM file or a DICOM series folder).
PATIENT_ID = "patient_id"
IMAGE = "image"
LABEL = "label"
SPLIT = "split"
STUDY_ID = "study_id"
SERIES_ID = "series_id"
REQUIRED_MANIFEST_COLUMNS = (PATIENT_ID, IMAGE, LABEL)
SPLIT_VALUES = ("train", "val", "test")

# Derived per-image identifier: stable, non-identifying, unique within a manifest.
IMAGE_ID = "image_id"

# Predictions and per-patient tables.
FOLD = "fold"
SCORE = "score"
SCORE_SINGLE = "score_single_view"  # with evaluation.tta: the unaugmented view's probability
SCORE_SINGLE_MODEL = "score_single_model"  # an ensemble of members: the first member's score alone
REPEAT = "repeat"  # splits.csv and member_predictions.csv of a study with members: the repeat ...
SEED = "seed"  # ... and the training seed of the member a fold belongs to
MEMBER_COLUMNS = (REPEAT, SEED)
NESTED_FILE = "nested.json"  # nested CV: the inner AUCs of every search point, each outer fold's choice
INNER = "inner"  # splits.csv of a nested cross-validation: -1 for outer rows, else the inner fold
ROLE = "role"  # which set a prediction belongs to: "test" (held out) or "val" (model selection)
N_IMAGES = "n_images"

# Run-folder files.
RESOLVED_CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
SPLITS_FILE = "splits.csv"
PATIENTS_FILE = "patients.csv"  # one row per patient: id, target, label and the manifest's extra columns
PREDICTIONS_FILE = "predictions.csv"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
MEMBER_PREDICTIONS_FILE = "member_predictions.csv"  # every member's test and val rows (train.seeds, repeats)
PER_PATIENT_FILE = "per_patient.csv"
METRICS_FILE = "metrics.json"
ROC_FILE = "roc.csv"
PR_FILE = "pr.csv"  # precision-recall curve of the per-patient scores
ROC_FIGURE_FILE = "roc.png"
REPORT_FILE = "report.html"
LOG_FILE = "run.log"
EXCLUDED_FILE = "excluded.csv"
DATA_HASHES_FILE = "data_hashes.csv"
CALIBRATION_FIGURE_FILE = "calibration.png"
SEAL_FILE = "seal.json"
FLOW_FILE = "flow.json"  # the manifest before the workflow's filter and the scan's exclusions (patient flow)
FLOW_FIGURE_FILE = "flow.svg"  # the patient-flow diagram
TABLE1_FILE = "table1.csv"  # characteristics per partition with standardised differences
CHECKLIST_FILE = "checklist.csv"  # TRIPOD+AI / CLAIM items and where the report answers them
PDF_FILE = "report.pdf"
EXPLANATIONS_DIR = "explanations"  # Grad-CAM of chosen test cases (pipeline.explain)
EXPLANATIONS_FILE = "explanations.json"
LOCK_FILE = "run.lock"
# Files of a fold folder (fold_<k>/).
FOLD_DONE_FILE = "done.json"
MODEL_FILE = "model.pt"  # the chosen epoch's state_dict
CHECKPOINT_FILE = "last.pt"  # the resumable training state, removed when the fold is done
HISTORY_FILE = "history.csv"
PROVENANCE_FILE = "provenance.json"  # cohortnet predict: what made a prediction folder
GROUP = "group"  # splits.csv of a leave-one-group-out study: the value each fold holds out
TARGET = "target"  # 1 for the positive class, 0 otherwise (added to every table the pipeline builds)
