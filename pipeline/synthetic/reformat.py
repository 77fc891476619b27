"""A NIfTI cohort rewritten as DICOM series: the same voxels and geometry in the other format.

``python -m pipeline.synthetic.reformat MANIFEST OUT [--split test]`` writes each NIfTI volume of
the manifest (optionally only the rows of one split) as a CT Image Storage series with
``write_dicom_series`` (its affine carried into IOP/IPP/PixelSpacing, stored values unsigned with
slope 1 and intercept 0 when the voxels are non-negative integers), and ``OUT/manifest.csv`` with
the same columns, ``image`` pointing at the series folders. A study's model is then checked on
the same cohort read through the DICOM path (issue: the exported AdrenalMNIST3D model on its test
split given as DICOM).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.synthetic.dicom import SeriesSpec, seeded_uid, write_dicom_series


def _series(volume: np.ndarray, affine: np.ndarray, folder: Path, patient_id: str, seed: int) -> Path:
    integral = np.array_equal(volume, np.round(volume)) and volume.min() >= 0
    spec = SeriesSpec(
        patient_id=patient_id,
        study_uid=seeded_uid(patient_id, "study"),
        series_uid=seeded_uid(patient_id, "series"),
        intercept=0.0 if integral else float(np.floor(volume.min())),
    )
    write_dicom_series(volume, affine, folder, spec, rng=np.random.default_rng(seed))
    return folder


def nifti_cohort_as_dicom(manifest: Path, out: Path, split: str | None = None) -> Path:
    """Rewrite the manifest's 3D NIfTI images as DICOM series under ``out``; returns the new manifest."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if split is not None:
        table = table[table["split"] == split].reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for k, (patient_id, image) in enumerate(zip(table["patient_id"], table["image"], strict=True)):
        source = nib.load(manifest.parent / image)
        if not isinstance(source, nib.Nifti1Image | nib.Nifti2Image):
            raise ValueError(f"{image}: {type(source).__name__} is not NIfTI")
        volume = np.asarray(source.dataobj, dtype=np.float64)
        if volume.ndim != 3:
            raise ValueError(f"{image}: only 3D volumes can be written as a DICOM series ({volume.ndim}D)")
        folder = out / "dicom" / f"{k:05d}"
        folders.append(str(_series(volume, source.affine, folder, patient_id, k).relative_to(out)))
    result = out / "manifest.csv"
    table.assign(image=folders).to_csv(result, index=False)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.synthetic.reformat", description=__doc__)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", help="only the rows of this split")
    args = parser.parse_args(argv)
    print(nifti_cohort_as_dicom(args.manifest, args.out, args.split))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
