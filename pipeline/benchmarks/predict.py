"""``cohortnet bench --suite predict``: throughput against the model-only limit, memory at scale, Dask.

Three measurements, each through ``predict_cohort`` itself:

- **throughput**: images/s end to end (files -> preprocessing workers -> fold ensemble -> part
  files and ledger) against the model-only limit, the same fold networks on the same batches of
  already-prepared tensors in memory. Alternated ``repeats`` times; medians and their ratio. The
  preprocessing alone is timed too: on a CPU the workers and the networks share the cores, so
  their costs add up and ``1 / (1/model + 1/preprocessing)`` is the limit end to end can reach.
- **memory**: peak RSS of a fresh process predicting 1,000, 10,000 and 100,000 small images
  (32x32 2D NIfTI written on the fly); flat means streaming. (The preprocessing workers' own
  memory is not reported: their ``ru_maxrss`` counts the pages inherited from the parent.)
- **dask**: ``--dask local:2`` (two single-threaded workers, one shard each) against one process,
  the same ``PredictOptions`` on both sides, alternated ``repeats`` times, medians; only the work
  after the cluster is up is timed (its start-up and shut-down are reported beside).

Everything runs on ``device`` (``--device``; the networks, and the workers of the Dask cluster).

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


def _model_only(model: Any, manifest: Path, chunk: int, device: str = "cpu") -> tuple[float, float]:
    """Seconds to prepare the cohort's tensors (the workers alone), and for the fold networks
    alone on them on ``device``, chunk by chunk (after one untimed chunk)."""
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
    on = torch.device(device)
    nets = {f: net.to(on) for f, net in model.networks().items()}
    batch = cfg.train.batch_size * 2
    if tensors:
        _ensemble(tensors[:chunk], nets, on, batch)  # warm-up: cuDNN autotunes the batch shapes here
    start = time.perf_counter()
    for k in range(0, len(tensors), chunk):
        _ensemble(tensors[k : k + chunk], nets, on, batch)
    return prepared, time.perf_counter() - start


def _end_to_end(model: Any, manifest: Path, out: Path, chunk: int, device: str = "cpu") -> float:
    from pipeline.predict.run import PredictOptions, predict_cohort, read_cohort

    cohort = read_cohort(manifest, model)
    start = time.perf_counter()
    predict_cohort(model, cohort, out, PredictOptions(chunk=chunk, progress=False, device=device))
    return time.perf_counter() - start


def throughput(
    source: Path, manifest: Path, work: Path, repeats: int = 3, chunk: int = 256, device: str = "cpu"
) -> dict[str, Any]:
    """Median images/s end to end and model-only on ``device``, alternated ``repeats`` times, and their ratio."""
    from pipeline.predict.run import open_model

    model = open_model(source)
    n = len(pd.read_csv(manifest))
    e2e, limit, prep = [], [], []
    for r in range(repeats):
        e2e.append(n / _end_to_end(model, manifest, work / f"e2e-{r}", chunk, device))
        prep_s, model_s = _model_only(model, manifest, chunk, device)
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
               PredictOptions(chunk=256, progress=False, device=sys.argv[4]))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def memory(source: Path, work: Path, scales: tuple[int, ...] = SCALES, device: str = "cpu") -> list[dict[str, Any]]:
    """Peak RSS of a fresh ``predict_cohort`` process per cohort size (files written first, untimed)."""
    rows = []
    for n in scales:
        manifest = synthetic_cohort(work / "cohort", n)
        out = work / f"mem-{n}"
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(source), str(manifest), str(out), device],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"n_images": n, "img_s": n / result["seconds"], **result})
    return rows


def _warm_worker() -> None:
    """Run once on each Dask worker before the timed runs: the imports a shard needs."""
    import pipeline.predict.run  # noqa: F401


def _predict_once(source: Path, manifest: Path, out: Path, options: Any) -> float:
    """Seconds of what one ``cohortnet predict`` process does: open the model, read the cohort, predict."""
    from pipeline.predict.run import open_model, predict_cohort, read_cohort

    start = time.perf_counter()
    model = open_model(source)
    predict_cohort(model, read_cohort(manifest, model), out, options)
    return time.perf_counter() - start


def dask_speed(
    source: Path, manifest: Path, work: Path, workers: int = 2, repeats: int = 3, device: str = "cpu"
) -> dict[str, Any]:
    """Seconds for ``--dask`` on a ``LocalCluster`` of ``workers`` (one shard each) against one
    process on the same cohort with the same options, alternated ``repeats`` times; medians. The
    cluster is started (and its workers' imports done) before, and closed after, the timed runs."""
    from distributed import Client, LocalCluster

    from pipeline.predict.fanout import dask_predict
    from pipeline.predict.run import PredictOptions

    n = len(pd.read_csv(manifest))
    options = PredictOptions(chunk=256, progress=False, device=device, workers=0)
    start = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with Client(cluster) as client:
        client.run(_warm_worker)
    startup = time.perf_counter() - start
    single, fanned = [], []
    try:
        for r in range(repeats):
            single.append(_predict_once(source, manifest, work / f"single-{r}", options))
            start = time.perf_counter()
            dask_predict(source, manifest, work / f"dask-{r}", options, cluster.scheduler_address, n_shards=workers)
            fanned.append(time.perf_counter() - start)
    finally:
        start = time.perf_counter()
        cluster.close()
        shutdown = time.perf_counter() - start
    a, b = statistics.median(single), statistics.median(fanned)
    return {
        "n_images": n,
        "single_img_s": n / a,
        "dask_img_s": n / b,
        "workers": workers,
        "ratio": a / b,
        "repeats": repeats,
        "single_s": single,
        "dask_s": fanned,
        "cluster_startup_s": startup,
        "cluster_shutdown_s": shutdown,
    }


def predict_benchmark(
    model: Path | None = None, cohort: Path | None = None, repeats: int = 3, quick: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """Every measurement above on ``device``, in a temporary folder; ``quick`` shrinks the sizes
    (not the reported figures)."""
    scales = tuple(n // 50 for n in SCALES) if quick else SCALES
    with tempfile.TemporaryDirectory(prefix="cohortnet-bench-predict-") as tmp:
        work = Path(tmp)
        synthetic = synthetic_model(work / "synthetic.zip")
        small = synthetic_cohort(work / "cohort", scales[0] * 2)
        result: dict[str, Any] = {"device": device, "repeats": repeats}
        result["throughput"] = {"synthetic": throughput(synthetic, small, work / "t", repeats, device=device)}
        if model is not None and cohort is not None:
            result["throughput"]["study"] = throughput(model, cohort, work / "s", repeats, device=device)
        result["memory"] = memory(synthetic, work, scales, device)
        try:
            result["dask"] = dask_speed(synthetic, small, work / "d", repeats=repeats, device=device)
        except ImportError:
            result["dask_skipped"] = "dask.distributed is not installed (pip install 'cohortnet[dask]')"
    return result


def format_predict(r: dict[str, Any]) -> str:
    runs = f"on {r['device']}, median of {r['repeats']} alternated runs" if "device" in r else "median"
    lines = [
        f"predict throughput ({runs}, images/s; model only = the fold networks on prepared tensors; "
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
    lines.append(f"  {'images':>8} {'img/s':>7} {'main MB':>8}")
    for m in r["memory"]:
        lines.append(f"  {m['n_images']:>8} {m['img_s']:>7.0f} {m['rss_mb']:>8.0f}")
    mem = r["memory"]
    if len(mem) > 1:
        growth = mem[-1]["rss_mb"] / mem[-2]["rss_mb"] - 1
        lines.append(f"  growth from {mem[-2]['n_images']} to {mem[-1]['n_images']} images: {growth:+.1%}")
    if "dask_skipped" in r:
        lines.append(f"dask: skipped, {r['dask_skipped']}")
    if "dask" not in r:
        return "\n".join(lines)
    d = r["dask"]
    lines.append(
        f"dask local:{d['workers']} against one process ({d['n_images']} images, same options, median of "
        f"{d['repeats']} alternated runs after the cluster is up): {d['dask_img_s']:.0f} vs {d['single_img_s']:.0f} "
        f"images/s ({d['ratio']:.2f}x); cluster start-up {d['cluster_startup_s']:.1f} s, "
        f"shut-down {d['cluster_shutdown_s']:.1f} s, not timed in either"
    )
    return "\n".join(lines)
