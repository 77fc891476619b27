"""Ingestion benchmark (``cohortnet bench --suite ingestion``): header scanning and series assembly.

1. Headers per second: ``scan_tree`` over a generated tree of ``n_files`` DICOM files (series of
   ``slices_per_series`` 64x64 slices in patient/study/series folders, plus a few junk files),
   reading headers only (in one process, then in up to 8) and with the default
   one-file-per-series decode check (in up to 8); the three modes interleaved, ``scan_repeats``
   rounds, median of each.
2. Series assembly, side by side in one run: ``load_scan`` and MONAI's ``PydicomReader`` (pinned,
   through ``LoadImage``) on the same ``series_slices``-slice series, interleaved, median of
   ``repeats`` runs. Both get the files in the same scrambled instance order.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.io.loader import load_scan
from pipeline.io.scan import ScanOptions, scan_tree


def _write_slice(path: Path, series: dict[str, Any], k: int, pixels: np.ndarray, instance: int) -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, generate_uid(), "CT"
    for keyword, value in series.items():
        setattr(ds, keyword, value)
    ds.ImagePositionPatient = [-100.0, -120.0, -50.0 + 1.25 * k]
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def write_series(folder: Path, n_slices: int, matrix: int, rng: np.random.Generator, patient: str) -> None:
    """``n_slices`` CT slices of ``matrix``^2, files named and numbered in a scrambled order."""
    folder.mkdir(parents=True, exist_ok=True)
    series = {
        "PatientName": f"Bench^{patient}",
        "PatientID": patient,
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "SeriesNumber": 1,
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "PixelSpacing": [0.7, 0.7],
        "SliceThickness": 1.25,
    }
    order = rng.permutation(n_slices)
    for k in range(n_slices):
        pixels = rng.integers(0, 4096, (matrix, matrix), dtype=np.uint16)
        _write_slice(folder / f"{order[k]:05d}", series, k, pixels, int(order[k]) + 1)


def write_tree(root: Path, n_files: int, slices_per_series: int, seed: int) -> int:
    """A PACS-like export of about ``n_files`` files; returns the number of files written."""
    rng = np.random.default_rng(seed)
    written = 0
    for s in range(max(1, n_files // slices_per_series)):
        patient = f"P{s // 3:05d}"
        write_series(root / patient / f"study{s % 3}" / f"series{s}", slices_per_series, 64, rng, patient)
        written += slices_per_series
    for j in range(max(1, n_files // 1000)):
        (root / f"README_{j}.txt").write_text("exported by PACS\n")
        written += 1
    return written


def _time(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _assembly(folder: Path, repeats: int) -> dict[str, float]:
    """Median seconds of ours and MONAI's PydicomReader on one series, runs interleaved."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    monai_load = LoadImage(image_only=True)
    ours_s, monai_s = [], []
    load_scan(folder)  # warm the page cache and imports for both
    monai_load(str(folder), reader=PydicomReader())
    for _ in range(repeats):
        ours_s.append(_time(lambda: load_scan(folder)))
        monai_s.append(_time(lambda: monai_load(str(folder), reader=PydicomReader())))
    ours, theirs = load_scan(folder).array, np.asarray(monai_load(str(folder), reader=PydicomReader()))
    same = bool(np.array_equal(np.sort(ours.ravel()), np.sort(theirs.astype(np.float32).ravel())))
    return {
        "assemble_ours_s": statistics.median(ours_s),
        "assemble_monai_pydicomreader_s": statistics.median(monai_s),
        "assemble_ratio_ours_to_monai": statistics.median(ours_s) / statistics.median(monai_s),
        "assemble_same_voxel_values": same,
    }


def _scans(tree: Path, out: Path, n_files: int, repeats: int) -> dict[str, Any]:
    """Median seconds and files/s of each scan mode, the modes interleaved, ``repeats`` rounds
    (each scan into its own folder)."""
    workers = min(os.cpu_count() or 1, 8)
    modes = list(dict.fromkeys((("header", 1), ("header", workers), ("sample", workers))))
    seconds: dict[str, list[float]] = {f"{mode}_{w}w": [] for mode, w in modes}
    n_series = 0
    for r in range(repeats):
        for mode, n_workers in modes:
            label = f"{mode}_{n_workers}w"
            options = ScanOptions(verify=mode, progress=False, workers=n_workers)
            summary = scan_tree(tree, out / f"{label}-{r}" / "m.csv", options)
            seconds[label].append(summary.seconds)
            n_series = summary.n_images
    results: dict[str, Any] = {"n_series": n_series, "workers": workers, "scan_repeats": repeats}
    for label, times in seconds.items():
        results[f"scan_{label}_s"] = statistics.median(times)
        results[f"scan_{label}_all_s"] = times
        results[f"files_per_s_{label}"] = n_files / statistics.median(times)
    return results


def ingestion_benchmark(
    n_files: int = 10_000,
    workdir: str | Path | None = None,
    seed: int = 0,
    *,
    slices_per_series: int = 50,
    series_slices: int = 200,
    series_matrix: int = 256,
    repeats: int = 5,
    scan_repeats: int = 3,
) -> dict[str, Any]:
    """Run both measurements in ``workdir`` (a temporary folder by default); returns the figures."""
    with tempfile.TemporaryDirectory(prefix="cohortnet-bench-") as tmp:
        base = Path(workdir) if workdir else Path(tmp)
        tree, out = base / "tree", base / "out"
        generate_s = _time(lambda: write_tree(tree, n_files, slices_per_series, seed))
        n_written = sum(1 for p in tree.rglob("*") if p.is_file())
        results: dict[str, Any] = {"n_files": n_written, "generate_s": generate_s}
        results |= _scans(tree, out, n_written, max(1, scan_repeats))
        series = base / "series"
        write_series(series, series_slices, series_matrix, np.random.default_rng(seed + 1), "S")
        results |= {"series_slices": series_slices, "series_matrix": f"{series_matrix}x{series_matrix}"}
        results |= _assembly(series, repeats)
    results |= {
        "repeats": repeats,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    return results


def format_ingestion(r: dict[str, Any]) -> str:
    """A small table of ``ingestion_benchmark``'s figures."""
    w = r["workers"]
    rows = [
        ("files scanned", f"{r['n_files']} files, {r['n_series']} series; median of {r.get('scan_repeats', 1)} rounds"),
        ("scan, headers only, 1 process", f"{r['scan_header_1w_s']:.2f} s = {r['files_per_s_header_1w']:.0f} files/s"),
        (
            f"scan, headers only, {w} processes",
            f"{r[f'scan_header_{w}w_s']:.2f} s = {r[f'files_per_s_header_{w}w']:.0f} files/s",
        ),
        (
            f"scan, one decode per series, {w} processes",
            f"{r[f'scan_sample_{w}w_s']:.2f} s = {r[f'files_per_s_sample_{w}w']:.0f} files/s",
        ),
        (f"assemble {r['series_slices']} x {r['series_matrix']}, ours", f"{r['assemble_ours_s']:.3f} s (median)"),
        ("same series, MONAI PydicomReader", f"{r['assemble_monai_pydicomreader_s']:.3f} s (median)"),
        ("ours / MONAI", f"{r['assemble_ratio_ours_to_monai']:.2f}"),
        ("same voxel values", str(r["assemble_same_voxel_values"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
