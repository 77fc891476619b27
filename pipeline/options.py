"""Every closed list of workflow values, defined once.

The config's type hints are these ``Literal`` aliases; the tuples (``get_args`` of the alias) are
what the CLI's ``choices``, the statistics' argument checks and the README test use. This module
imports nothing from the package, so every layer (statistics included) may use it.
"""

from __future__ import annotations

from typing import Literal, get_args

Arch = Literal["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200"]
Norm = Literal["batch", "instance", "group"]
IntensityMode = Literal["ct_window", "zscore", "minmax", "none"]
AugmentBackend = Literal["batch", "monai"]
Resize = Literal["resize", "pad_crop"]
Nonfinite = Literal["refuse", "zero", "min"]
Cache = Literal["auto", "memory", "disk", "device"]
ClassBalance = Literal["weighted_loss", "sampler", "none"]
Amp = Literal["auto", "bf16", "off"]
Device = Literal["auto", "cpu", "cuda"]
Select = Literal["auc", "loss"]
ChannelsLast = Literal["auto", "on", "off"]
Scheme = Literal["kfold", "holdout", "leave_one_group_out", "nested"]
Aggregate = Literal["mean", "max", "median"]
CiMethod = Literal["delong", "delong_wald", "bootstrap", "bootstrap_percentile"]
Tta = Literal["none", "flips"]
Ensemble = Literal["mean", "none"]
ExplainMethod = Literal["gradcam", "gradcampp"]
ExplainLayer = Literal["auto", "layer1", "layer2", "layer3", "layer4"]

ARCHS: tuple[str, ...] = get_args(Arch)
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
CI_METHODS: tuple[str, ...] = get_args(CiMethod)
DEVICES: tuple[str, ...] = get_args(Device)
NONFINITE: tuple[str, ...] = get_args(Nonfinite)
EXPLAIN_METHODS: tuple[str, ...] = get_args(ExplainMethod)

# threshold rules are open (any number), so they are a pattern rather than a list
THRESHOLD_RULE_FORMS = ("youden", "sensitivity=<0..1>", "specificity=<0..1>", "<number>")
