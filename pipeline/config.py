"""Workflow YAML -> frozen, typed config. Every problem is reported at once.

The schema is the dataclasses below: their field names are the workflow keys (README.md,
"Workflow reference"), their type hints the accepted types, their defaults the defaults.
``load_config(path, overrides)`` reads the YAML (``yaml.safe_load`` only), applies
``--set section.key=value`` overrides, checks every key and value, and raises one
:class:`~pipeline.errors.ValidationError` listing all problems.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from pipeline import options as opt
from pipeline.errors import ValidationError
from pipeline.resources import is_file, physical_memory

ARCHS = opt.ARCHS


REPEATABLE_SCHEMES = ("kfold",)
VAL_FRACTION_TOLERANCE = 0.005  # 0.333 is 1/3; 0.3 is refused (it would be 1/3 or 1/4)
SEARCH_SECTIONS = ("model", "data", "train")  # what a search point may change
MAX_SEARCH_POINTS = 64


@dataclass(frozen=True)
class TaskConfig:
    label: str = "label"  # manifest column holding the class
    positive: Any = 1  # value of `label` that is the positive class (score = P(positive))


@dataclass(frozen=True)
class ModelConfig:
    arch: opt.Arch = "resnet18"
    spatial_dims: Literal[2, 3] = 3
    in_channels: int = 1
    # ResNet stem: MONAI's default is a 7^d convolution with stride 1 followed by max-pooling; a
    # stride of 2 (torchvision's stem) costs 4x (2D) / 8x (3D) fewer FLOPs. See README "Model".
    stem_stride: int = 1
    stem_kernel: int = 7
    stem_max_pool: bool = True
    widen_factor: float = 1.0
    # batch: MONAI's default. instance/group do not depend on batch statistics, which keeps
    # scores comparable between folds when batches are small (pooled out-of-fold AUC).
    norm: opt.Norm = "batch"
    dropout: float = 0.0
    pretrained: str | None = None  # local path to a state_dict (.pt), loaded with weights_only=True


@dataclass(frozen=True)
class IntensityConfig:
    mode: opt.IntensityMode = "zscore"
    window: tuple[float, float] = (-1000.0, 1000.0)  # HU range mapped to [0, 1] for ct_window


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True  # random flips along every spatial axis
    rotate90: bool = False  # random 90-degree rotations in the first two axes
    affine: bool = False  # small random rotation / scaling
    intensity: bool = True  # random intensity scale and shift
    noise: bool = False  # additive Gaussian noise
    # batch: per-sample random draws applied to the whole batch on the training device (fast);
    # monai: MONAI's dictionary transforms, one sample at a time in the loader
    backend: opt.AugmentBackend = "batch"


@dataclass(frozen=True)
class DataConfig:
    spatial_size: tuple[int, ...] = (64, 64, 64)  # network input size, one entry per spatial dim
    spacing: tuple[float, ...] | None = None  # resample to this voxel size (mm) before resizing
    resize: opt.Resize = "resize"  # how to reach spatial_size after resampling
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    nonfinite: opt.Nonfinite = "refuse"  # NaN/Inf voxels: refuse, or replace by 0 or the minimum
    # where preprocessed tensors live: host memory, one file per image on disk, or the GPU
    # ("device"); auto: the GPU or host memory when the cohort fits in a quarter of it, else disk
    cache: opt.Cache = "auto"
    # processes for the one-time preprocessing; none: one per CPU (up to 8, shared by the ranks of
    # a node); 0: in the main process
    workers: int | None = None
    # image paths must stay under the manifest's folder or under one of these folders (relative to
    # the workflow file); symbolic links inside them (cohortnet scan's layout) are followed
    image_roots: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    seed: int = 0
    # several training seeds: the study is run once per seed (members), each on the same splits, and
    # the members are averaged (evaluation.ensemble) with their spread reported; () = [seed]
    seeds: tuple[int, ...] = ()
    class_balance: opt.ClassBalance = "weighted_loss"
    amp: opt.Amp = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16
    device: opt.Device = "auto"
    # how the best epoch is chosen on the validation patients: AUC (ties: lower loss) or loss. A
    # loss-selected model is better calibrated, so scores pooled over folds stay comparable.
    select: opt.Select = "auc"
    patience: int = 0  # stop after this many epochs without a better validation score (0: never)
    deterministic: bool = False
    num_threads: int = 0  # torch CPU threads (0: torch's default)
    channels_last: opt.ChannelsLast = "auto"  # auto: on CUDA only (slower on CPUs measured)
    compile: bool = False  # torch.compile the model (first epoch pays the compilation)


@dataclass(frozen=True)
class ValidationConfig:
    scheme: opt.Scheme = "kfold"
    folds: int = 5
    # fraction of each fold's training patients held out (grouped by patient) to choose the epoch
    inner_val_fraction: float = 0.2
    # leave_one_group_out: the manifest column (site, scanner...) whose values are held out in turn
    group: str | None = None
    # nested: the inner folds (of each outer fold's training patients) that choose the search
    # point, the epoch and the threshold
    inner_folds: int = 3
    # repeated k-fold: new patient-grouped splits per repeat (repeat r splits with seed train.seed + 7919 r)
    repeats: int = 1


@dataclass(frozen=True)
class EvaluationConfig:
    aggregate: opt.Aggregate = "mean"
    ci_method: opt.CiMethod = "delong"
    n_bootstrap: int = 2000
    threshold_rule: str = "youden"  # youden | sensitivity=0.9 | specificity=0.9 | a fixed number
    subgroups: tuple[str, ...] = ()  # manifest columns for subgroup metrics
    # test-time augmentation: flips averages the probabilities of every mirrored view (2^d views);
    # the single-view scores are kept beside them and compared (paired DeLong) in the report
    tta: opt.Tta = "none"
    # several members (train.seeds, validation.repeats): mean averages their scores per image (the
    # study's figure), none reports the first member and gives the others as the spread
    ensemble: opt.Ensemble = "mean"


@dataclass(frozen=True)
class ExplainConfig:
    # held-out test cases explained with Grad-CAM (0: none): the most confident false positives
    # and false negatives, the cases nearest the locked threshold, typical true positives/negatives
    cases: int = 12
    method: opt.ExplainMethod = "gradcam"  # monai.visualize.GradCAM or GradCAMpp
    # the ResNet stage whose activations are explained; auto: the deepest whose grid has at least
    # MIN_GRID voxels along every axis (layer4 of a small input is 1-2 voxels wide and locates nothing)
    layer: opt.ExplainLayer = "auto"
    nifti: bool = False  # also write each map as NIfTI in the image's own geometry
    # without a GPU, models above this many parameters are not explained (the reason is reported)
    cpu_max_parameters: int = 50_000_000


@dataclass(frozen=True)
class ReportConfig:
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    # manifest columns described per partition in Table 1 (with standardised differences)
    covariates: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackingConfig:
    # MLflow tracking (the mlflow extra): "local" is a file store in <output_dir>/mlruns; any other
    # value is a tracking URI (http://server:5000, file:/path, sqlite:///mlflow.db); none: off
    mlflow: str | None = None
    experiment: str | None = None  # MLflow experiment name (default: the study's name)


@dataclass(frozen=True)
class WorkflowConfig:
    study: str
    manifest: Path
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: Path = Path("reports")  # run folder: <output_dir>/<study>/<run_id>/
    # keep only manifest rows whose column has one of the listed values, e.g. {split: [train, val]}
    filter: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # nested cross-validation's search space: dotted model/data/train keys and the values to try,
    # e.g. {train.lr: [0.001, 0.0003], model.arch: [resnet10, resnet18]} (every combination)
    search: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready dict of the resolved config (paths as strings, tuples as lists)."""
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- loading


MAX_YAML_NODES = 100_000  # values once aliases are expanded; a workflow has a few hundred


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Nodes in ``node`` with every alias expanded (an alias is the same node object again)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive structure counts once per cycle
    children: list[Any] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, memo)
        if total > MAX_YAML_NODES:
            break
    memo[id(node)] = total
    return total


class _WorkflowLoader(yaml.SafeLoader):
    """``yaml.safe_load`` with YAML 1.2's booleans: only true/false (any case) are booleans.

    YAML 1.1 also reads yes/no/on/off as booleans, so ``amp: off`` would arrive as False. Here they
    stay the words the user wrote; a boolean option takes them as the yes or no they mean. A key
    written twice in one mapping (YAML keeps the last silently) is refused, and so is a file whose
    aliases expand to more than ``MAX_YAML_NODES`` values (a "billion laughs" file), measured on
    the composed nodes before any Python object is built.
    """

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases expand to more than {MAX_YAML_NODES:,} values", node.start_mark
            )
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is written twice in one section", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_WorkflowLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_WorkflowLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def yaml_load(text: str) -> Any:
    """Parse workflow YAML: what ``yaml.safe_load`` does (plain data only, SafeConstructor), with
    the loader above (YAML 1.2 booleans, duplicate keys and alias expansion refused)."""
    loader = _WorkflowLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.epochs=3", "data.spatial_size=[32,32,32]"]`` -> nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
            continue
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part} is set both as a value and as a section")
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise ValidationError(problems, "command line")
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            inherited = _scheme_keys(out[key], value) if key == "validation" else out[key]
            out[key] = _merge(dict(inherited), value)
        else:
            out[key] = value
    return out


def _scheme_keys(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A base workflow's validation keys that a new ``scheme`` still reads: a nested workflow that
    extends a k-fold one does not inherit its inner_val_fraction (``_SCHEME_KEYS``)."""
    scheme = extra.get("scheme")
    if scheme is None or scheme == base.get("scheme") or scheme not in _SCHEME_KEYS:
        return dict(base)
    return {k: v for k, v in base.items() if k == "scheme" or k in _SCHEME_KEYS[scheme]}


def load_config(path: Path | str, overrides: Sequence[str] = (), check_files: bool = True) -> WorkflowConfig:
    """Read and validate a workflow. Relative paths in it are relative to the workflow file.
    ``check_files=False`` does not require the manifest and pretrained weights to exist (a run
    folder's ``config.yaml`` after its inputs were moved)."""
    raw = read_workflow(path, overrides)
    return config_from_dict(raw, base_dir=Path(path).parent, source=str(path), check_files=check_files)


def read_workflow(path: Path | str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The workflow YAML with ``--set`` overrides merged in, before any checking.

    ``extends: other.yaml`` (relative to this file) starts from another workflow and overrides
    its keys section by section; paths in the base stay relative to the base's folder.
    """
    raw = _read_yaml(Path(path), seen=())
    return _merge(raw, parse_overrides(overrides))


_PATH_KEYS = ("manifest", "output_dir")


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not is_file(path):
        raise ValidationError([f"workflow file not found: {str(path)[:200]}"], "workflow")
    if path.resolve() in seen:
        raise ValidationError([f"{path}: 'extends' forms a cycle"], "workflow")
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ValidationError(
            [f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at line {line}): save it as UTF-8"],
            "workflow",
        ) from None
    except OSError as exc:  # no permission, a folder, a name over the file system's limit
        raise ValidationError([f"{path}: cannot be read ({exc.strerror or exc})"], "workflow") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None)
        detail = f": {str(problem)[:200]}" if problem else ""
        raise ValidationError([f"{path} is not valid YAML{where}{detail}"], "workflow") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationError([f"{path}: expected a mapping of sections, got {type(raw).__name__}"], "workflow")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ValidationError([f"{path}: extends must be a file name, got {parent!r}"], "workflow")
    base = _read_yaml(path.parent / parent, (*seen, path.resolve()))
    for key in _PATH_KEYS:  # keep the base's paths pointing where the base meant them to
        if isinstance(base.get(key), str) and key not in raw:
            base[key] = str(((path.parent / parent).parent / base[key]).resolve())
    return _merge(base, raw)


def config_from_dict(
    raw: Mapping[str, Any], base_dir: Path, source: str = "workflow", check_files: bool = True
) -> WorkflowConfig:
    """Typed config from a workflow mapping; raises one ValidationError with every problem.

    A value with a type problem is replaced by its default so that the semantic checks still run
    on everything else and their problems are listed in the same error.
    """
    problems: list[str] = []
    values = _convert(WorkflowConfig, raw, "", problems)
    cfg = WorkflowConfig(**values)
    cfg = dataclasses.replace(
        cfg,
        manifest=(base_dir / str(cfg.manifest)).resolve(),
        output_dir=(base_dir / cfg.output_dir).resolve() if "output_dir" in raw else Path("reports").resolve(),
    )
    if cfg.data.image_roots:
        roots = tuple(str((base_dir / r).resolve()) for r in cfg.data.image_roots)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_roots=roots))
    if cfg.model.pretrained:  # relative to the workflow file, like the manifest
        model = dataclasses.replace(cfg.model, pretrained=str((base_dir / cfg.model.pretrained).resolve()))
        cfg = dataclasses.replace(cfg, model=model)
    semantic = check_semantics(cfg, check_manifest=check_files and "manifest" in raw, check_files=check_files)
    problems += [p for p in semantic if p not in problems]
    if problems:
        raise ValidationError(problems, f"workflow {source}")
    return cfg


def check_semantics(cfg: WorkflowConfig, check_manifest: bool = True, check_files: bool = True) -> list[str]:
    """Cross-field rules the types alone cannot express, every problem at once."""
    problems = []
    if check_manifest and not is_file(cfg.manifest):
        problems.append(f"manifest: file not found: {_short(str(cfg.manifest))}")
    problems += _data_problems(cfg) + _number_problems(cfg)
    if check_files:  # a workflow about to run (a recorded config is read with check_files=False)
        problems += _new_run_validation_problems(cfg.validation)
    if check_files and cfg.model.pretrained is not None and not is_file(cfg.model.pretrained):
        problems.append(f"model.pretrained: file not found: {cfg.model.pretrained}")
    return problems + _rule_problems(cfg)


def _data_problems(cfg: WorkflowConfig) -> list[str]:
    """Input geometry: sizes and spacing against the model's dimensions, memory, window."""
    problems: list[str] = []
    dims = cfg.model.spatial_dims
    if len(cfg.data.spatial_size) != dims:
        problems.append(f"data.spatial_size has {len(cfg.data.spatial_size)} entries but model.spatial_dims is {dims}")
    if any(s < 8 for s in cfg.data.spatial_size):
        problems.append(f"data.spatial_size entries must be >= 8, got {list(cfg.data.spatial_size)}")
    problems += _memory_problems(cfg)
    size = cfg.data.spatial_size
    if cfg.data.augment.rotate90 and len(size) >= 2 and size[0] != size[1]:
        problems.append(
            "data.augment.rotate90 turns the first two axes, which need equal sizes; "
            f"data.spatial_size is {list(cfg.data.spatial_size)}"
        )
    if cfg.data.spacing is not None and len(cfg.data.spacing) != dims:
        problems.append(f"data.spacing has {len(cfg.data.spacing)} entries but model.spatial_dims is {dims}")
    if cfg.data.spacing is not None and any(s <= 0 for s in cfg.data.spacing):
        problems.append(f"data.spacing must be positive, got {list(cfg.data.spacing)}")
    lo, hi = cfg.data.intensity.window
    if lo >= hi:
        problems.append(f"data.intensity.window must be [low, high] with low < high, got [{lo}, {hi}]")
    return problems


def _number_problems(cfg: WorkflowConfig) -> list[str]:
    """Counts, rates and fractions outside their range."""
    problems: list[str] = []
    positive_ints = {
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "model.in_channels": cfg.model.in_channels,
        "model.stem_stride": cfg.model.stem_stride,
        "model.stem_kernel": cfg.model.stem_kernel,
        "evaluation.n_bootstrap": cfg.evaluation.n_bootstrap,
    }
    problems += [f"{k} must be >= 1, got {v}" for k, v in positive_ints.items() if v < 1]
    if cfg.data.workers is not None and cfg.data.workers < 0:
        problems.append(f"data.workers must be >= 0, got {cfg.data.workers}")
    if cfg.train.lr <= 0:
        problems.append(f"train.lr must be > 0, got {cfg.train.lr}")
    problems += _validation_problems(cfg.validation)
    problems += _member_problems(cfg)
    problems += _search_problems(cfg)
    if not 0 <= cfg.model.dropout < 1:
        problems.append(f"model.dropout must be in [0, 1), got {cfg.model.dropout}")
    return problems


# the validation keys each scheme reads; any other one set to a non-default value is refused
# (validation.group with scheme kfold would silently give plain k-fold)
_SCHEME_KEYS: dict[str, set[str]] = {
    "holdout": set(),
    "kfold": {"folds", "inner_val_fraction", "repeats"},  # repeats: REPEATABLE_SCHEMES
    "leave_one_group_out": {"group", "inner_val_fraction"},
    "nested": {"folds", "inner_folds"},
}


def inner_val_groups(fraction: float) -> int:
    """n of ``inner_val_fraction`` 1/n: a fold's validation patients are one of n stratified patient
    groups of its training patients (``crossval``), so only shares 1/n, at most 0.5, are exact."""
    return max(2, math.floor(1 / fraction + 0.5))


def _validation_problems(v: ValidationConfig) -> list[str]:
    """What no scheme can run with."""
    problems: list[str] = []
    if v.scheme == "kfold" and v.folds < 2:
        problems.append(f"validation.folds must be >= 2 for scheme kfold, got {v.folds}")
    if v.scheme == "leave_one_group_out" and not v.group:
        problems.append("validation.group must name a manifest column (site, scanner...) for leave_one_group_out")
    if not 0 < v.inner_val_fraction < 1:
        problems.append(f"validation.inner_val_fraction must be between 0 and 1, got {v.inner_val_fraction}")
    return problems


def _new_run_validation_problems(v: ValidationConfig) -> list[str]:
    """Keys the scheme does not read, and a validation share the splitter cannot honour: refused in
    a workflow about to run, not in the config a finished run recorded (an older run folder or
    model.zip whose nested config kept k-fold's inner_val_fraction still reports and predicts)."""
    problems: list[str] = []
    default = ValidationConfig()
    reads = _SCHEME_KEYS[v.scheme]
    for key in ("folds", "inner_folds", "group", "inner_val_fraction"):
        if key not in reads and getattr(v, key) != getattr(default, key):
            problems.append(f"validation.{key} is not used by scheme {v.scheme}: remove it (or choose another scheme)")
    fraction = v.inner_val_fraction
    if 0 < fraction < 1 and "inner_val_fraction" in reads:
        n = inner_val_groups(fraction)
        if abs(1 / n - fraction) > VAL_FRACTION_TOLERANCE:
            nearest = sorted({max(2, math.floor(1 / fraction)), math.ceil(1 / fraction)})  # both >= 2
            options = " or ".join(f"{1 / k:.3g} (1/{k})" for k in nearest)
            problems.append(
                f"validation.inner_val_fraction {fraction}: the validation patients are one of n stratified "
                f"groups of each fold's training patients, so the share is 1/n (at most 0.5); use {options}"
            )
    return problems


def _member_problems(cfg: WorkflowConfig) -> list[str]:
    """Repeats draw new k-fold splits; seeds are distinct."""
    problems: list[str] = []
    repeats = cfg.validation.repeats
    if repeats < 1:
        problems.append(f"validation.repeats must be >= 1, got {repeats}")
    elif repeats > 1 and cfg.validation.scheme not in REPEATABLE_SCHEMES:
        problems.append(
            f"validation.repeats draws new k-fold splits; scheme {cfg.validation.scheme} has fixed test sets "
            "(use train.seeds to repeat its training)"
        )
    if cfg.validation.scheme == "nested" and len(cfg.train.seeds) > 1:
        problems.append("train.seeds: nested cross-validation trains one seed (repeat it as separate runs)")
    if len(set(cfg.train.seeds)) != len(cfg.train.seeds):
        problems.append(f"train.seeds must be distinct, got {list(cfg.train.seeds)}")
    if len(cfg.train.seeds) == 1 and cfg.train.seeds[0] != cfg.train.seed:
        problems.append(
            f"train.seeds: {list(cfg.train.seeds)} is one seed and the study is one plain run; "
            f"set train.seed: {cfg.train.seeds[0]} instead (train.seed is {cfg.train.seed})"
        )
    return problems


def _search_problems(cfg: WorkflowConfig) -> list[str]:
    """The search space: nested CV only, model/data/train keys, every point a valid workflow."""
    v = cfg.validation
    problems: list[str] = []
    if v.scheme == "nested":
        if v.folds < 2 or v.inner_folds < 2:
            problems.append(
                f"nested cross-validation needs folds and inner_folds >= 2, got {v.folds} and {v.inner_folds}"
            )
    elif cfg.search:
        return ["search: a search space needs validation.scheme nested (inner folds choose the point)"]
    for key, values in cfg.search.items():
        section = key.split(".")[0]
        if section not in SEARCH_SECTIONS or "." not in key:
            problems.append(f"search: {key!r} is not a {'/'.join(SEARCH_SECTIONS)} key (e.g. train.lr)")
        elif key in ("train.seeds", "train.seed", "train.device", "train.num_threads", "data.cache", "data.workers"):
            problems.append(f"search: {key} is not a modelling choice and cannot be searched")
        if not values:
            problems.append(f"search: {key} lists no values")
    n_points = math.prod(len(v) for v in cfg.search.values()) if cfg.search else 1
    if n_points > MAX_SEARCH_POINTS:
        problems.append(f"search: {n_points} points (the product of the value counts); at most {MAX_SEARCH_POINTS}")
    if problems or not cfg.search:
        return problems
    for point in search_grid(cfg):
        try:
            point_config(cfg, point)
        except ValidationError as exc:
            problems += [f"search point {point}: {p}" for p in exc.problems]
    return problems


def search_grid(cfg: WorkflowConfig) -> list[dict[str, Any]]:
    """Every point of the search space (dotted key -> value), in the workflow's order; [{}] without one."""
    keys = list(cfg.search)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(cfg.search[k] for k in keys))]


def point_config(cfg: WorkflowConfig, point: Mapping[str, Any]) -> WorkflowConfig:
    """The workflow with one search point's values set (and no search space of its own)."""
    raw = {k: v for k, v in cfg.to_dict().items() if k != "search"}
    for key, value in point.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValidationError([f"{key}: {part} is a value, not a section"], "search")
        if last not in node:
            raise ValidationError([f"{key} is not a workflow key"], "search")
        node[last] = _plain(value)
    return config_from_dict(raw, base_dir=Path("."), source="search point", check_files=False)


def study_members(cfg: WorkflowConfig) -> list[tuple[int, int]]:
    """(repeat, training seed) of every member of the study, the first one being the plain run."""
    seeds = cfg.train.seeds or (cfg.train.seed,)
    return [(r, s) for r in range(max(1, cfg.validation.repeats)) for s in seeds]


def split_seed(cfg: WorkflowConfig, repeat: int) -> int:
    """The seed of repeat ``repeat``'s splits (repeat 0: train.seed, the plain run's splits)."""
    return cfg.train.seed + 7919 * repeat


def _rule_problems(cfg: WorkflowConfig) -> list[str]:
    """The threshold rule and the study name (it becomes part of the run folder's name)."""
    problems: list[str] = []
    if not _valid_threshold_rule(cfg.evaluation.threshold_rule):
        problems.append(
            "evaluation.threshold_rule must be youden, sensitivity=<0..1>, specificity=<0..1> or a number, "
            f"got {cfg.evaluation.threshold_rule!r}"
        )
    if not cfg.study.replace("-", "").replace("_", "").replace(".", "").isalnum():
        problems.append(f"study must contain only letters, digits, '-', '_' and '.', got {cfg.study!r}")
    return problems


def _memory_problems(cfg: WorkflowConfig) -> list[str]:
    """One batch of network inputs (float32) must fit in a quarter of this machine's memory; the
    network's activations need several times more. Checked before anything is allocated."""
    memory = physical_memory()
    batch = 4 * cfg.model.in_channels * math.prod(cfg.data.spatial_size) * cfg.train.batch_size
    if memory is None or cfg.train.batch_size < 1 or batch <= memory / 4:
        return []
    return [
        f"data.spatial_size {list(cfg.data.spatial_size)} with train.batch_size {cfg.train.batch_size} needs "
        f"{batch / 2**30:.1f} GiB for one batch of inputs alone; this machine has {memory / 2**30:.1f} GiB"
    ]


def _valid_threshold_rule(rule: str) -> bool:
    rule = rule.strip().lower()
    if rule == "youden":
        return True
    name, sep, value = rule.partition("=")
    try:
        number = float(value if sep else name)
    except ValueError:
        return False
    return (not sep) or (name in ("sensitivity", "specificity") and 0 < number < 1)


# --------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is dict:
        return f"mapping of {_type_name(get_args(tp)[0])} to {_type_name(get_args(tp)[1])}"
    if origin is tuple:
        args = get_args(tp)
        inner = _type_name(args[0])
        return f"list of {inner}" if args[-1] is Ellipsis else f"list of {len(args)} {inner}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    """``repr`` of a value for a message, cut to 80 characters (a pasted blob is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_QUOTE_HINT = " (an empty value, null or ~ is no value; to mean the word, quote it, e.g. 'null')"


def _convert_value(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against type hint ``tp``; return the converted value (or None after a problem)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_section(typing.cast(type, tp), value, where, problems)
    convert = _CONVERTERS.get(origin, _convert_scalar) if origin is not None else _convert_scalar
    return convert(tp, value, where, problems)


def _convert_section(cls: type, value: Any, where: str, problems: list[str]) -> Any:
    if value is None:  # a section header with nothing under it: all defaults
        value = {}
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected a section (mapping), got {_short(value)}")
        return None
    return cls(**_convert(cls, value, f"{where}.", problems))


def _convert_union(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in (a for a in args if a is not type(None)):
        trial: list[str] = []
        out = _convert_value(arg, value, where, trial)
        if not trial:
            return out
    problems.append(f"{where}: expected {_type_name(tp)}, got {_short(value)}")
    return None


def _convert_literal(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
        return value
    if value is None:
        problems.append(f"{where}: must be one of {_type_name(tp)}, got null{_QUOTE_HINT}")
        return None
    close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    problems.append(f"{where}: must be one of {_type_name(tp)}, got {_short(value)}{hint}")
    return None


def _convert_mapping(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    key_type, value_type = get_args(tp)
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected a mapping, got {_short(value)}")
        return None
    n_before = len(problems)
    out = {
        _convert_value(key_type, k, f"{where} key", problems): _convert_value(value_type, v, f"{where}.{k}", problems)
        for k, v in value.items()
    }
    return out if len(problems) == n_before else None


def _convert_tuple(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    args = get_args(tp)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        problems.append(f"{where}: expected {_type_name(tp)}, got {_short(value)}")
        return None
    if args[-1] is not Ellipsis and len(value) != len(args):
        problems.append(f"{where}: expected {_type_name(tp)}, got {len(value)} entries")
        return None
    item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
    n_before = len(problems)
    items = [
        _convert_value(t, v, f"{where}[{i}]", problems) for i, (t, v) in enumerate(zip(item_types, value, strict=False))
    ]
    return tuple(items) if len(problems) == n_before else None


_NOT_THIS = object()  # a scalar converter's answer for a value of another type


def _to_bool(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    return _BOOL_WORDS.get(v.lower(), _NOT_THIS) if isinstance(v, str) else _NOT_THIS


def _to_int(v: Any) -> Any:
    return v if isinstance(v, int) and not isinstance(v, bool) else _NOT_THIS


def _to_float(v: Any) -> Any:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it plainly is.
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    return _NOT_THIS


def _to_str(v: Any) -> Any:
    return str(v) if isinstance(v, str | int | float) and not isinstance(v, bool) else _NOT_THIS


def _to_path(v: Any) -> Any:
    return Path(v) if isinstance(v, str | Path) else _NOT_THIS


_SCALARS: dict[Any, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    Path: _to_path,
}


def _convert_scalar(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    if tp is Any:
        return value
    if tp is str and value is None:
        problems.append(f"{where}: expected a string, got null{_QUOTE_HINT}")
        return None
    convert = _SCALARS.get(tp)
    out = convert(value) if convert is not None else _NOT_THIS
    if out is _NOT_THIS:
        problems.append(f"{where}: expected {_type_name(tp)}, got {_short(value)}")
        return None
    return out


_CONVERTERS: dict[Any, Callable[[Any, Any, str, list[str]], Any]] = {
    Union: _convert_union,
    types.UnionType: _convert_union,
    Literal: _convert_literal,
    dict: _convert_mapping,
    tuple: _convert_tuple,
}


def _convert(cls: type, raw: Mapping[str, Any], prefix: str, problems: list[str]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(fields)})"
            problems.append(f"unknown key {prefix}{key}{hint}")
    for name, f in fields.items():
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if name in raw:
            before = len(problems)
            out[name] = _convert_value(hints[name], raw[name], f"{prefix}{name}", problems)
            if (
                len(problems) > before
                and has_default
                and (out[name] is None or not dataclasses.is_dataclass(hints[name]))
            ):
                del out[name]  # fall back to the default so later checks can run
            elif len(problems) > before and not has_default:
                out[name] = ""  # a required value of the wrong type: checked as empty
        elif not has_default:
            problems.append(f"missing required key {prefix}{name}")
            out[name] = ""
    return out


def dump_config(cfg: WorkflowConfig) -> str:
    """The resolved config as YAML, for the run folder (reloadable with ``load_config``)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
