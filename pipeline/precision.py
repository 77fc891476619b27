"""Mixed precision that is checked on the machine, not assumed: bf16 autocast layer by layer.

bf16 autocast is worth having (about 1.4x on a CPU with AVX-512 BF16, more on a GPU), but a bf16
kernel can be wrong. On CPUs with native bf16, oneDNN's bf16 weight gradient of a 3D convolution
is garbage (values up to 1e37, or NaN) whenever the input depth is larger than 1 and smaller than
the kernel's (e.g. a 3x3x3 convolution over a 2x2x1 feature map in a ResNet's last stage): the
weights blow up within a few steps and the validation logits turn NaN. Which kernels are affected
depends on the CPU, the library build and the shapes, so no fixed rule is safe.

``resolve_precision`` therefore runs every convolution and linear layer of the model, at the
shape and batch size it will see in training, in bf16 autocast and in fp32 on the same
bf16-rounded inputs and weights, and compares output, input gradient and weight gradient. A layer
whose bf16 result is not finite or not within ``TOLERANCE`` of fp32 is kept in fp32
(``keep_in_fp32``); the rest of the model keeps bf16. The defect is intermittent at some shapes
(it reads memory it did not write: a 3x3x3 stride-2 convolution over a 1x1x1 map is wrong in some
processes only), so on a CPU every convolution whose kernel is larger than its input map (mostly
padding; such maps are tiny and cheap in fp32) is kept in fp32 without relying on the check. A
fold records the decision in its checkpoint, and a resumed fold reuses it. Normalisation statistics, the loss, the
sigmoid and the optimiser state stay in fp32 anyway (autocast's own rules and ``training.py``),
and so does the classifier head (``classifier_head``), so the scores are not rounded to bf16.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.config import WorkflowConfig

log = logging.getLogger(__name__)

# bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.004); a correct kernel with fp32
# accumulation stays within about 0.005 of fp32 relative to the largest value; a broken one is off
# by 1 or more. 0.05 separates the two with a wide margin on either side.
TOLERANCE = 0.05
CHECKED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Precision:
    """What training and inference use: bf16 autocast or not, and the layers kept in fp32."""

    bf16: bool
    fp32_layers: tuple[str, ...] = ()
    reason: str = ""

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def describe(self) -> str:
        text = "bf16 autocast" if self.bf16 else "fp32"
        if self.fp32_layers:
            text += f", {len(self.fp32_layers)} layer(s) kept in fp32 ({', '.join(self.fp32_layers)})"
        return text + (f": {self.reason}" if self.reason else "")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere torch emulates
    bf16 and autocast makes convolutions slower, not faster."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return False


def use_bf16(amp: str, device: torch.device) -> bool:
    """``auto``: bf16 autocast on a CUDA device that supports it and on CPUs with native bf16."""
    if amp == "off":
        return False
    if amp == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


class _Fp32Forward:
    """Mixin: the layer computes in fp32 even inside a bf16 autocast region."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=input.device.type, enabled=False):
            return super().forward(input.float())  # type: ignore[misc]


_FP32_CLASSES: dict[type, type] = {}


def keep_in_fp32(model: nn.Module, names: tuple[str, ...] | list[str]) -> None:
    """Make the named layers compute in fp32 under autocast. The layer's class is swapped for a
    subclass with the same parameters, so state_dict keys and checkpoints are unchanged."""
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        cls = type(module)
        if issubclass(cls, _Fp32Forward):
            continue
        if cls not in _FP32_CLASSES:
            _FP32_CLASSES[cls] = type(f"Fp32{cls.__name__}", (_Fp32Forward, cls), {})
        module.__class__ = _FP32_CLASSES[cls]


def layer_input_shapes(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> dict[str, tuple]:
    """Per checked layer, the shape of one sample's input (without the batch axis), from one
    forward pass in eval mode without autograd (running statistics are not touched)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, CHECKED_LAYERS):

            def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any, name: str = name) -> None:
                shapes.setdefault(name, tuple(args[0].shape[1:]))

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    if not bool(torch.isfinite(value).all()):
        return float("inf")
    scale = float(reference.abs().max())
    return float((value.float() - reference).abs().max()) / max(scale, 1e-30)


def bf16_error(layer: nn.Module, sample_shape: tuple[int, ...], batch_size: int, device: torch.device) -> float:
    """Worst relative error of ``layer``'s bf16 forward, input gradient and weight gradient against
    fp32 on the same bf16-rounded data. Uses its own random generator (the global one, which
    seeds training, is not touched) and a copy of the layer."""
    gen = torch.Generator(device=device).manual_seed(1234)
    bf16_layer = copy.deepcopy(layer).to(device).train()
    with torch.no_grad():
        for p in bf16_layer.parameters():
            p.copy_(p.bfloat16().float())
    bf16_layer.__class__ = _kernel_class(bf16_layer)  # probe the layer's own kernel, not the fallback
    ref_layer = copy.deepcopy(bf16_layer)
    x = torch.randn(batch_size, *sample_shape, generator=gen, device=device).bfloat16().float()
    x_bf16, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        y = bf16_layer(x_bf16)
    grad = torch.randn(y.shape, generator=gen, device=device).bfloat16().float()
    (y.float() * grad).sum().backward()
    with torch.autocast(device_type=device.type, enabled=False):
        y_ref = ref_layer(x_ref)
    (y_ref * grad).sum().backward()
    errors = [_relative_error(y.detach(), y_ref.detach())]
    assert x_bf16.grad is not None
    assert x_ref.grad is not None
    errors.append(_relative_error(x_bf16.grad, x_ref.grad))
    for p, q in zip(bf16_layer.parameters(), ref_layer.parameters(), strict=True):
        if p.grad is not None and q.grad is not None:
            errors.append(_relative_error(p.grad, q.grad))
    return max(errors)


_CHECKED: dict[tuple[Any, ...], float] = {}


def _kernel_class(layer: nn.Module) -> type:
    """The layer's own class (not the fp32 wrapper that ``keep_in_fp32`` may have put on it)."""
    cls = type(layer)
    return cls.__mro__[2] if issubclass(cls, _Fp32Forward) else cls


def kernel_exceeds_input(layer: nn.Module, sample_shape: tuple[int, ...]) -> bool:
    """A convolution whose (dilated) kernel is larger than its input map along some axis."""
    if not isinstance(layer, nn.modules.conv._ConvNd):
        return False
    spatial = sample_shape[1:]
    extent = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.dilation, strict=True)]
    return any(e > n for e, n in zip(extent, spatial, strict=True))


def unsafe_bf16_layers(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, device: torch.device, repeats: int = 2
) -> dict[str, str]:
    """Layers (name -> why) whose bf16 result at this input shape is wrong or not to be trusted
    on ``device``. Layers of the same
    configuration, input shape, batch size and device are checked once per process (``repeats``
    times), so the folds of a study make the same decision."""
    modules = dict(model.named_modules())
    bad: dict[str, str] = {}
    for name, shape in layer_input_shapes(model, input_shape, device).items():
        layer = modules[name]
        if device.type == "cpu" and kernel_exceeds_input(layer, shape):
            bad[name] = "has a kernel larger than its input map"
            continue
        key = (_kernel_class(layer).__qualname__, repr(layer), shape, batch_size, str(device))
        if key not in _CHECKED:
            _CHECKED[key] = max(bf16_error(layer, shape, max(2, batch_size), device) for _ in range(repeats))
        if not _CHECKED[key] <= TOLERANCE:
            bad[name] = f"is off by {_CHECKED[key]:.3g} (relative) in bf16 at this shape"
    return bad


def resolve_precision(
    model: nn.Module,
    amp: str,
    device: torch.device,
    input_shape: tuple[int, ...],
    batch_size: int,
) -> Precision:
    """Decide bf16 or fp32 for ``model`` (already on ``device``) and keep in fp32 every layer whose
    bf16 kernel fails the check. ``amp: off`` skips the check; when every checked layer fails,
    the model runs in fp32."""
    if not use_bf16(amp, device):
        reason = "train.amp is off" if amp == "off" else f"no native bf16 on this {device.type}"
        return Precision(False, reason=reason)
    bad = unsafe_bf16_layers(model, input_shape, batch_size, device)
    n_checked = sum(isinstance(m, CHECKED_LAYERS) for m in model.modules())
    if bad and len(bad) == n_checked:
        return Precision(False, reason="no layer of this model computes correctly in bf16 on this machine")
    for name, why in bad.items():
        log.info("bf16 check: layer %s %s: kept in fp32", name, why)
    head = classifier_head(model)
    kept = [*bad, *([head] if head is not None and head not in bad else [])]
    keep_in_fp32(model, kept)
    reason = "their bf16 kernels are wrong or not trusted at these shapes on this machine" if bad else ""
    if head is not None:  # bf16 logits have 8 bits of mantissa: 400 images gave 159 distinct scores
        reason = "; ".join(filter(None, [reason, f"the classifier head {head} keeps the scores' fp32 resolution"]))
    return Precision(True, tuple(kept), reason)


def classifier_head(model: nn.Module) -> str | None:
    """The name of the model's last linear layer (the logit head), computed in fp32 under bf16
    autocast so that scores, their ranks (AUC, ties) and the locked threshold are not rounded."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linear[-1] if linear else None


def choose_precision(cfg: WorkflowConfig, model: nn.Module, device: torch.device) -> Precision:
    """The workflow's precision for ``model`` on ``device`` (see ``resolve_precision``)."""
    shape = (cfg.model.in_channels, *cfg.data.spatial_size)
    return resolve_precision(model, cfg.train.amp, device, shape, cfg.train.batch_size)
