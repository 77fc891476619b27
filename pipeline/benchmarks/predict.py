"""``cohortnet bench --suite predict``: throughput against the model-only limit, memory at scale, Dask.

Three measurements, each through ``predict_cohort`` itself:

- **throughput**: images/s end to end (files -> preprocessing workers -> fold ensemble -> part
  files and ledger) against the model-only limit, the same fold networks on the same batches of
  already-prepared tensors in memory. Alternated ``repeats`` times; medians and their ratio. The
  preprocessing alone is timed too: on a CPU the workers and the networks share the cores, so
  their costs add up and ``1 / (1/model + 1/preprocessing)`` is the limit end to end can reach.
- **memory**: peak RSS of a fresh process predicting 1,000, 10,000 and 100,000 small images
  (32x32 2D NIfTI written on the fly), and of its preprocessing workers; flat means streaming.
- **dask**: ``--dask local:2`` (two single-threaded workers, one shard each) against one process.

Without ``--model`` the model is synthetic (a ResNet-10 2D on 32x32, random weights, written as a
model archive): the benchmark times data paths, not accuracy. With ``--model RUN_OR_ZIP --input
MANIFEST`` the throughput rows are also measured on that study and cohort.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

SIZE = 32
SCALES = (1_000, 10_000, 100_000)


def synthetic_model(out: Path, arch: str = "resnet10") -> Path:
    """A model archive of a randomly initialised 2D network on 32x32 images (timing only)."""
    import io

    import torch

    from pipeline.config import config_from_dict, dump_config
    from pipeline.models import build_model
    from pipeline.predict.archive import write_archive

    raw = {
        "study": "bench-predict",
        "manifest": "bench.csv",
        "task": {"label": "label", "positive": 1},
        "model": {"arch": arch, "spatial_dims": 2},
        "data": {"spatial_size": [SIZE, SIZE], "intensity": {"mode": "minmax"}},
        "train": {"batch_size": 64},
        "validation": {"scheme": "holdout"},
    }
    cfg = config_from_dict(raw, base_dir=out.parent, source="bench", check_files=False)
    torch.manual_seed(0)
    weights = io.BytesIO()
    torch.save(build_model(cfg.model).state_dict(), weights)
    info = {
        "format_version": 1,
        "study_run": "synthetic",
        "folds": [{"fold": 0, "best_epoch": 0, "best_val_auc": None, "precision": "fp32"}],
        "threshold": 0.5,
        "aggregate": "mean",
        "label_col": "label",
        "positive": "1",
        "headline": {},
    }
    files = {
        "config.yaml": dump_config(cfg).encode(),
        "fold_0/model.pt": weights.getvalue(),
        "model.json": json.dumps(info).encode(),
        "leakage.json": json.dumps({"patients": [], "images": []}).encode(),
    }
    write_archive(files, out)
    return out


def synthetic_cohort(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` 32x32 radiograph-sized NIfTI images (one per patient, labelled) and their manifest."""
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        name = f"images/I{k:06d}.nii"
        path = folder / name
        if not path.exists():
            pixels = rng.integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8)
            nib.save(nib.Nifti1Image(pixels, np.eye(4)), path)
        rows.append((f"B{k:06d}", name, k % 2))
    manifest = folder / f"manifest-{n}.csv"
    pd.DataFrame(rows, columns=["patient_id", "image", "label"]).to_csv(manifest, index=False)
    return manifest


def _model_only(model: Any, manifest: Path, chunk: int) -> tuple[float, float]:
    """Seconds to prepare the cohort's tensors (the workers alone), and for the fold networks
    alone on them, chunk by chunk."""
    import torch

    from pipeline.datasets import guarded_chain
    from pipeline.predict.run import ImageItems, _ensemble, read_cohort
    from pipeline.transforms import deterministic_transforms

    cfg = model.config
    chain = guarded_chain(
        ImageItems(read_cohort(manifest, model).table), deterministic_transforms(cfg.data, cfg.model.spatial_dims), None
    )
    start = time.perf_counter()
    tensors = [t for t, _ in chain if t is not None]
    prepared = time.perf_counter() - start
    nets = model.networks()
    start = time.perf_counter()
    for k in range(0, len(tensors), chunk):
        _ensemble(tensors[k : k + chunk], nets, torch.device("cpu"), cfg.train.batch_size * 2)
    return prepared, time.perf_counter() - start


def _end_to_end(model: Any, manifest: Path, out: Path, chunk: int) -> float:
    from pipeline.predict.run import PredictOptions, predict_cohort, read_cohort

    cohort = read_cohort(manifest, model)
    start = time.perf_counter()
    predict_cohort(model, cohort, out, PredictOptions(chunk=chunk, progress=False, device="cpu"))
    return time.perf_counter() - start


def throughput(source: Path, manifest: Path, work: Path, repeats: int = 3, chunk: int = 256) -> dict[str, Any]:
    """Median images/s end to end and model-only, alternated ``repeats`` times, and their ratio."""
    from pipeline.predict.run import open_model

    model = open_model(source)
    n = len(pd.read_csv(manifest))
    e2e, limit, prep = [], [], []
    for r in range(repeats):
        e2e.append(n / _end_to_end(model, manifest, work / f"e2e-{r}", chunk))
        prep_s, model_s = _model_only(model, manifest, chunk)
        prep.append(n / prep_s)
        limit.append(n / model_s)
    a, b, c = statistics.median(e2e), statistics.median(limit), statistics.median(prep)
    bound = 1.0 / (1.0 / b + 1.0 / c)  # both on the same CPUs: their costs add up
    return {
        "n_images": n,
        "end_to_end_img_s": a,
        "model_only_img_s": b,
        "ratio": a / b,
        "preprocess_only_img_s": c,
        "shared_cpu_bound_img_s": bound,
        "ratio_to_shared_bound": a / bound,
        "repeats": repeats,
    }


_CHILD = """
import json, resource, sys, time
from pathlib import Path
from pipeline.predict.run import PredictOptions, open_model, predict_cohort, read_cohort
model = open_model(Path(sys.argv[1]))
start = time.perf_counter()
predict_cohort(model, read_cohort(Path(sys.argv[2]), model), Path(sys.argv[3]),
               PredictOptions(chunk=256, progress=False, device="cpu"))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def memory(source: Path, work: Path, scales: tuple[int, ...] = SCALES) -> list[dict[str, Any]]:
    """Peak RSS of a fresh ``predict_cohort`` process per cohort size (files written first, untimed)."""
    rows = []
    for n in scales:
        manifest = synthetic_cohort(work / "cohort", n)
        out = work / f"mem-{n}"
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(source), str(manifest), str(out)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"n_images": n, "img_s": n / result["seconds"], **result})
    return rows


def dask_speed(source: Path, manifest: Path, work: Path, workers: int = 2) -> dict[str, Any]:
    """Seconds for ``--dask local:N`` (N shards) against one process on the same cohort."""
    from pipeline.predict.fanout import dask_predict
    from pipeline.predict.run import PredictOptions, open_model

    n = len(pd.read_csv(manifest))
    single = _end_to_end(open_model(source), manifest, work / "single", 256)
    start = time.perf_counter()
    options = PredictOptions(chunk=256, progress=False, device="cpu", workers=0)
    dask_predict(source, manifest, work / "dask", options, f"local:{workers}", n_shards=workers)
    fanned = time.perf_counter() - start
    return {
        "n_images": n,
        "single_img_s": n / single,
        "dask_img_s": n / fanned,
        "workers": workers,
        "ratio": single / fanned,
    }


def predict_benchmark(
    model: Path | None = None, cohort: Path | None = None, repeats: int = 3, quick: bool = False
) -> dict[str, Any]:
    """Every measurement above, in a temporary folder; ``quick`` shrinks the sizes (not the reported figures)."""
    scales = tuple(n // 50 for n in SCALES) if quick else SCALES
    with tempfile.TemporaryDirectory(prefix="cohortnet-bench-predict-") as tmp:
        work = Path(tmp)
        synthetic = synthetic_model(work / "synthetic.zip")
        small = synthetic_cohort(work / "cohort", scales[0] * 2)
        result: dict[str, Any] = {"throughput": {"synthetic": throughput(synthetic, small, work / "t", repeats)}}
        if model is not None and cohort is not None:
            result["throughput"]["study"] = throughput(model, cohort, work / "s", repeats)
        result["memory"] = memory(synthetic, work, scales)
        result["dask"] = dask_speed(synthetic, small, work / "d")
    return result


def format_predict(r: dict[str, Any]) -> str:
    lines = [
        "predict throughput (median images/s; model only = the fold networks on prepared tensors; "
        "preprocessing only = the workers alone;",
        "  shared bound = both on the same CPUs, 1 / (1/model + 1/preprocessing): the CPU limit)",
        f"  {'cohort':<10} {'images':>7} {'end to end':>11} {'model only':>11} {'ratio':>6} "
        f"{'preprocessing':>14} {'shared bound':>13} {'ratio':>6}",
    ]
    for name, t in r["throughput"].items():
        lines.append(
            f"  {name:<10} {t['n_images']:>7} {t['end_to_end_img_s']:>11.0f} {t['model_only_img_s']:>11.0f} "
            f"{t['ratio']:>6.2f} {t['preprocess_only_img_s']:>14.0f} {t['shared_cpu_bound_img_s']:>13.0f} "
            f"{t['ratio_to_shared_bound']:>6.2f}"
        )
    lines.append("peak RSS of one predict process (32x32 images, chunk 256)")
    lines.append(f"  {'images':>8} {'img/s':>7} {'main MB':>8} {'worker MB':>10}")
    for m in r["memory"]:
        lines.append(f"  {m['n_images']:>8} {m['img_s']:>7.0f} {m['rss_mb']:>8.0f} {m['worker_rss_mb']:>10.0f}")
    mem = r["memory"]
    if len(mem) > 1:
        growth = mem[-1]["rss_mb"] / mem[-2]["rss_mb"] - 1
        lines.append(f"  growth from {mem[-2]['n_images']} to {mem[-1]['n_images']} images: {growth:+.1%}")
    if "dask" not in r:
        return "\n".join(lines)
    d = r["dask"]
    lines.append(
        f"dask local:{d['workers']} against one process ({d['n_images']} images): "
        f"{d['dask_img_s']:.0f} vs {d['single_img_s']:.0f} images/s ({d['ratio']:.2f}x)"
    )
    return "\n".join(lines)
