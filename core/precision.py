"""One decision of precision per device, made before any `TrainingArguments` exists.

Where bfloat16 is native it is the fastest safe choice; where it is not, it is either refused or
emulated, and both hurt:
- a GPU without native bf16 (T4, the free Colab GPU): Unsloth replaces
  `torch.cuda.is_bf16_supported` so that emulation does not count, and `TrainingArguments` then
  rejects `bf16: true` while the config is parsed - the run cannot start; under `backend: hf`
  torch counts emulated bf16 as supported and the run is silently slow. float16 is native there.
- a CPU without AVX512-BF16 or AMX (most laptops, many cloud VMs): torch emulates bf16 matmuls,
  measured at 0.9 GFLOP/s against 53 GFLOP/s in float32 on a 2-core AVX2 EPYC (1024x1024).

So the config's `dtype` is a preference that this decision may overrule, and the trainer's
`bf16`/`fp16` flags follow the decision: on a GPU native bf16, else fp16; on a CPU bf16 only where
it is native, else float32. `VIRL_BF16=0` (or `1`) overrides the hardware answer "is bf16 native
here?" - to rehearse a T4 on a bigger GPU, or an AVX2 laptop on a server CPU.

float32 is kept, except under `backend: unsloth` on a GPU with native bf16: Unsloth's generated
trainers (unsloth/models/rl.py, the mixed-precision block) set `bf16=True` whenever neither flag
is set there, and the only ways around it (its forced-float32 stamp, or denying bf16) turn on
float16 autocast elsewhere. So that case is decided as bfloat16, said in one line; `backend: hf`
keeps float32. What the trainer finally used is recorded too (core/runs.py).

A GPU is used only when the installed torch has kernels for it: torch 2.14's CUDA 13 wheels are
built for sm_75 to sm_120, so a V100 (sm_70) is refused before anything loads, with what to do.

No torch import at module level: the demo orchestrator asks this module too, without torch.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.cli import UserError
from core.launch import is_main_process

if TYPE_CHECKING:
    from core.config import ModelArguments

DTYPES = ("auto", "bfloat16", "float16", "float32")
OVERRIDE = "VIRL_BF16"


@dataclass(frozen=True)
class Precision:
    """What a run computes in: `dtype` (16-bit weights, or the compute dtype of 4-bit ones) and the
    trainer's autocast flags, with the reason in words."""

    device: str
    dtype: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.dtype == "float16"

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def line(self) -> str:
        return f"[precision] {self.dtype} on {self.device.upper() if self.device == 'cuda' else 'the CPU'}: {self.reason}"


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where /proc/cpuinfo is absent."""
    try:
        with open(path, encoding="utf-8", errors="ignore") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.lower().split())
    except OSError:
        pass
    return frozenset()


def torch_isa_caps(env: Mapping[str, str] | None = None) -> list[str]:
    """The environment variables that keep torch's x86 kernels below native bf16, as `NAME=value`.

    A CPU flag is not enough: torch's bf16 matmuls run in oneDNN, and `ONEDNN_MAX_CPU_ISA` below
    AVX512_CORE_BF16 makes oneDNN emulate them (measured on an avx512_bf16 EPYC, one thread, 512x512:
    bf16 419 -> 0.7 GFLOP/s, float32 14-25 either way); `ATEN_CPU_CAPABILITY=avx2` (or `default`) puts
    torch's own kernels on the AVX2 path. Both are how torch is told to behave like an AVX2 CPU, so
    a run under them gets what an AVX2 CPU gets.
    """
    env = os.environ if env is None else env
    caps = []
    onednn = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    # oneDNN's ISA names at or above native bf16: AVX512_CORE_BF16, AVX512_CORE_FP16, the AMX
    # levels, the AVX10 levels; ALL/DEFAULT mean no cap.
    if onednn and not (onednn in ("ALL", "DEFAULT") or "BF16" in onednn or "FP16" in onednn or "AMX" in onednn
                       or onednn.startswith("AVX10")):
        caps.append(f"ONEDNN_MAX_CPU_ISA={onednn}")
    aten = (env.get("ATEN_CPU_CAPABILITY") or "").strip().lower()
    if aten in ("default", "avx2"):
        caps.append(f"ATEN_CPU_CAPABILITY={aten}")
    return caps


def cpu_native_bf16(flags: frozenset[str], machine: str | None = None,
                    env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether torch computes bf16 in hardware on this CPU, and the evidence: the flag, its absence,
    or the environment that caps torch's kernels below it (`torch_isa_caps`)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return ("bf16" in flags, "Arm BF16 extension" if "bf16" in flags else "no Arm BF16 extension")
    found = sorted(flags & {"amx_bf16", "avx512_bf16"})
    caps = torch_isa_caps(env)
    if found and caps:
        return False, (f"the CPU has native bf16 ({', '.join(found)}) but torch's kernels are capped below it "
                       f"({', '.join(caps)}): bf16 would be emulated, ~50x slower")
    if found:
        return True, f"the CPU has native bf16 ({', '.join(found)})"
    if not flags:
        return False, "the CPU flags are unreadable (no /proc/cpuinfo), so bf16 is assumed emulated"
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return False, f"the CPU has no native bf16 ({isa}, no avx512_bf16/amx_bf16): bf16 would be emulated, ~50x slower"


def cuda_native_bf16() -> tuple[bool, str]:
    """Whether the current CUDA GPU has native bf16 (compute capability 8.0+), with its name."""
    import torch

    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    # including_emulation=False: a T4 "supports" bf16 through emulation, which is what hurts.
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return native, f"{name} (compute capability {major}.{minor}) {'has' if native else 'has no'} native bf16"


def native_bf16(device: str) -> tuple[bool, str]:
    """The hardware answer for `device` ("cuda" or "cpu"), unless VIRL_BF16 overrides it."""
    forced = os.environ.get(OVERRIDE, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False, f"{OVERRIDE}={forced} treats this {device.upper()} as having no native bf16"
    if forced in ("1", "true", "yes", "on"):
        return True, f"{OVERRIDE}={forced} treats this {device.upper()} as having native bf16"
    if device == "cuda":
        return cuda_native_bf16()
    return cpu_native_bf16(cpu_flags())


def decide(requested: str | None, device: str, native: bool, evidence: str,
           backend: str | None = None) -> Precision:
    """The dtype for `device` given the config's preference and whether bf16 is native.

    auto: bf16 where native, else fp16 on a GPU and float32 on a CPU. bfloat16 where it is not
    native: the same fallback, said out loud. float16 on a CPU: float32 (no CPU the toolkit targets
    has fast fp16). float32 is kept - the user asked for the slow, exact choice - except where the
    trainer cannot keep it: `backend: unsloth` on a GPU with native bf16 (see the module docstring),
    which is bfloat16, said out loud. `backend` is the model backend (`None`: a recipe without one,
    which trains with stock transformers).
    """
    requested = requested or "auto"
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    fallback = "float16" if device == "cuda" else "float32"
    if requested == "float32":
        if device == "cuda" and native and backend == "unsloth":
            return Precision(device, "bfloat16", "the config asks for float32, but Unsloth's trainer turns it into "
                             f"bf16 autocast where bf16 is native ({evidence}): bfloat16 instead; "
                             "backend: hf keeps float32")
        return Precision(device, "float32", "the config asks for float32")
    if requested == "float16":
        if device == "cuda":
            return Precision(device, "float16", "the config asks for float16")
        return Precision(device, "float32", "the config asks for float16, which a CPU emulates: float32 instead")
    if native:
        asked = "the config asks for bfloat16" if requested == "bfloat16" else "dtype auto"
        return Precision(device, "bfloat16", f"{asked}; {evidence}")
    if requested == "bfloat16":
        return Precision(device, fallback, f"the config asks for bfloat16, but {evidence}: {fallback} instead")
    return Precision(device, fallback, f"dtype auto; {evidence}")


def decide_for(requested: str | None, device: str, backend: str | None = None) -> Precision:
    """`decide` with this machine's answer (or the VIRL_BF16 override)."""
    native, evidence = native_bf16(device)
    return decide(requested, device, native, evidence, backend)


# ------------------------------------------------------------------------- devices, announced
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def has_kernels_for(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build compiled for `arch_list` (`torch.cuda.get_arch_list()`) runs on a GPU of
    this compute capability: a cubin for sm_XY runs on the same major version with a minor >= Y, PTX
    (compute_XY) is compiled at load time for any capability >= X.Y."""
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit():  # sm_90a and the like: one exact GPU family, never an older one
            continue
        built = divmod(int(number), 10)
        if (kind == "sm" and built[0] == major and built[1] <= minor) or (kind == "compute" and built <= (major, minor)):
            return True
    return False


def check_gpu_kernels() -> None:
    """Refuse, before anything loads, a GPU the installed torch has no kernels for (a V100 under
    torch 2.14's CUDA 13 wheels): otherwise the first CUDA kernel fails deep inside a forward pass
    with "no kernel image is available for execution on the device"."""
    import torch

    arch_list = torch.cuda.get_arch_list()
    capability = tuple(torch.cuda.get_device_capability(0))
    if not arch_list or has_kernels_for(capability, arch_list):
        return
    sm = f"sm_{capability[0]}{capability[1]}"
    raise UserError(
        f"{torch.cuda.get_device_name(0)} ({sm}) has no kernels in this torch build ({torch.__version__}, built for "
        f"{' '.join(arch_list)}): install a torch build whose torch.cuda.get_arch_list() includes {sm} (for a V100, "
        "PyTorch's CUDA 12.6 wheels kept Volta; the CUDA 12.8+ and 13 wheels and vLLM's torch pin do not), use a T4 "
        "or newer GPU, or run on the CPU with CUDA_VISIBLE_DEVICES=''"
    )


def resolve_device(requested: str | None) -> str:
    """`auto`/`cuda`/`cpu` -> the device a run uses, failing clearly when `cuda` is asked of a machine
    without a GPU (instead of silently training on the CPU), or when torch has no kernels for the GPU."""
    requested = requested or "auto"
    if requested == "cuda" and not has_cuda():
        raise UserError("device: cuda was requested but no CUDA GPU is visible; use device: auto (or cpu)")
    device = "cuda" if (requested != "cpu" and has_cuda()) else "cpu"
    if device == "cuda":
        check_gpu_kernels()
    return device


def check_device(margs: ModelArguments) -> str:
    """Resolve `margs.device` (see `resolve_device`)."""
    return resolve_device(margs.device)


_ANNOUNCED: set[Precision] = set()


def precision_for(requested: str | None, device: str, backend: str | None = None) -> Precision:
    """The precision decision (core/precision.py) for this machine, printed once per process."""
    try:
        precision = decide_for(requested, device, backend)
    except ValueError as err:
        raise UserError(str(err)) from None
    if precision not in _ANNOUNCED and is_main_process():
        _ANNOUNCED.add(precision)
        print(precision.line())
    return precision
