"""One precision decision per device (core/precision.py), applied before TrainingArguments exist."""

import json

import pytest

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core import precision as P
from core.cli import UserError
from core.config import apply_precision, parse_args
from tests.conftest import run_entry

# (requested dtype, device, bf16 native?) -> chosen dtype
DECISIONS = [
    ("auto", "cuda", True, "bfloat16"),
    ("auto", "cuda", False, "float16"),        # T4 / V100
    ("bfloat16", "cuda", False, "float16"),    # the config's bf16 overruled where it is emulated
    ("bfloat16", "cuda", True, "bfloat16"),
    ("float16", "cuda", True, "float16"),      # the user's fp16 kept: it is native everywhere
    ("float32", "cuda", True, "float32"),
    ("auto", "cpu", True, "bfloat16"),         # avx512_bf16 / AMX
    ("auto", "cpu", False, "float32"),         # AVX2: bf16 would be emulated
    ("bfloat16", "cpu", False, "float32"),
    ("float16", "cpu", True, "float32"),       # no CPU the toolkit targets has fast fp16
    ("float32", "cpu", True, "float32"),
    (None, "cpu", True, "bfloat16"),
]


@pytest.mark.parametrize("requested,device,native,expected", DECISIONS)
def test_decision_table(requested, device, native, expected):
    choice = P.decide(requested, device, native, "evidence")
    assert choice.dtype == expected
    assert (choice.bf16, choice.fp16) == (expected == "bfloat16", expected == "float16")
    assert choice.reason  # every decision says why


# float32 under each backend: Unsloth's generated trainers autocast a float32 run to bf16 on a GPU
# with native bf16 (tests/test_trainer_precision.py drives that code), so the decision says bfloat16
# there instead of recording a float32 the run would not have.
@pytest.mark.parametrize("device, native, backend, expected", [
    ("cuda", True, "unsloth", "bfloat16"),
    ("cuda", False, "unsloth", "float32"),    # T4: Unsloth keeps an explicit float32 there
    ("cuda", True, "hf", "float32"),          # stock transformers keeps it
    ("cuda", True, None, "float32"),          # recipes without a backend (the reward model's Trainer)
    ("cpu", True, "unsloth", "float32"),      # Unsloth's CPU backend patches no trainer
])
def test_float32_is_kept_where_the_trainer_keeps_it(device, native, backend, expected):
    choice = P.decide("float32", device, native, "the GPU's evidence", backend)
    assert choice.dtype == expected
    if expected != "float32":
        assert "Unsloth's trainer" in choice.reason and "backend: hf keeps float32" in choice.reason


# Compute capability, torch's arch list -> does the build run there?
@pytest.mark.parametrize("capability, arch_list, runs", [
    ((7, 0), ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], False),   # V100 under torch 2.14 cu130
    ((7, 5), ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], True),    # T4
    ((8, 9), ["sm_80", "sm_86"], True),        # a cubin runs on later minors of its major (4090 on sm_86)
    ((9, 0), ["sm_80", "sm_86"], False),       # but never on another major
    ((12, 0), ["sm_80", "compute_90"], True),  # PTX is compiled for anything newer
    ((10, 0), ["sm_90a"], False),              # arch-specific builds serve only their own family
])
def test_which_gpus_a_torch_build_has_kernels_for(capability, arch_list, runs):
    assert P.has_kernels_for(capability, arch_list) is runs


def test_the_installed_torch_runs_on_a_t4_but_not_a_v100():
    """The installed build's own arch list (readable without a GPU): the contract the refusal rests on."""
    import torch

    arch_list = torch.cuda.get_arch_list()
    assert P.has_kernels_for((7, 5), arch_list)
    assert not P.has_kernels_for((7, 0), arch_list), f"this torch build has V100 kernels now: {arch_list}"


def test_a_v100_is_refused_in_one_line_before_loading(monkeypatch):
    import torch

    _fake_gpu(monkeypatch, "Tesla V100-SXM2-16GB", (7, 0), bf16=False)
    with pytest.raises(UserError) as refused:
        apply_precision({"dtype": "auto", "device": "auto", "bf16": None, "fp16": False, "use_cpu": False})
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("Tesla V100-SXM2-16GB (sm_70) has no kernels in this torch build")
    assert " ".join(torch.cuda.get_arch_list()) in message and "CUDA 12.6" in message
    assert "CUDA_VISIBLE_DEVICES=''" in message
    # A T4 on the same build is accepted.
    _fake_gpu(monkeypatch, "Tesla T4", (7, 5), bf16=False)
    assert P.resolve_device("auto") == "cuda"


def test_float32_under_unsloth_on_a_bf16_gpu_says_so_at_parse(monkeypatch, capsys):
    _fake_gpu(monkeypatch, "NVIDIA GeForce RTX 4090", (8, 9), bf16=True)
    monkeypatch.setattr(P, "_ANNOUNCED", set())  # the decision line is printed once per process
    values = {"dtype": "float32", "device": "auto", "backend": "unsloth", "bf16": None, "fp16": False,
              "use_cpu": False}
    assert apply_precision(values).dtype == "bfloat16" and (values["bf16"], values["fp16"]) == (True, False)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[precision]"))
    assert line.startswith("[precision] bfloat16 on CUDA: the config asks for float32, but Unsloth's trainer")
    values = {"dtype": "float32", "device": "auto", "backend": "hf", "bf16": None, "fp16": False, "use_cpu": False}
    assert apply_precision(values).dtype == "float32" and (values["bf16"], values["fp16"]) == (False, False)


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        P.decide("bf16", "cpu", True, "")


# CPU flag sets as /proc/cpuinfo lists them -> native bf16?
CPUS = [
    ({"sse4_2", "avx", "avx2", "fma"}, "x86_64", False),                      # most laptops, many cloud VMs
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", False),        # AVX-512 without BF16 (Skylake-SP)
    ({"avx2", "avx512f", "avx512_bf16"}, "x86_64", True),                     # Zen 4, Cooper Lake
    ({"avx2", "avx512f", "amx_bf16", "amx_tile", "amx_int8"}, "x86_64", True),  # Sapphire Rapids
    ({"fp", "asimd", "bf16"}, "aarch64", True),                               # Graviton 3, Neoverse V1
    ({"fp", "asimd"}, "aarch64", False),
    (set(), "x86_64", False),                                                # unreadable: assume emulated
]


@pytest.mark.parametrize("flags,machine,native", CPUS)
def test_cpu_flags_decide_native_bf16(flags, machine, native):
    found, evidence = P.cpu_native_bf16(frozenset(flags), machine, env={})  # torch's kernels uncapped
    assert found is native
    assert evidence


AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})


# The environment torch reads -> what it leaves of native bf16 on a CPU that has it.
@pytest.mark.parametrize("env, caps", [
    ({}, []),
    (AVX2_CAPS, ["ONEDNN_MAX_CPU_ISA=AVX2", "ATEN_CPU_CAPABILITY=avx2"]),  # DEVELOPERS.md's AVX2 stand-in
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, ["ONEDNN_MAX_CPU_ISA=AVX512_CORE"]),  # AVX-512 without BF16
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, ["ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI"]),
    ({"DNNL_MAX_CPU_ISA": "AVX2"}, ["ONEDNN_MAX_CPU_ISA=AVX2"]),            # oneDNN's older name
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, []),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, []),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, []),
    ({"ATEN_CPU_CAPABILITY": "default"}, ["ATEN_CPU_CAPABILITY=default"]),
    ({"ATEN_CPU_CAPABILITY": "avx512"}, []),
    ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, []),  # MKL does float32 GEMMs only
])
def test_torch_isa_caps_decide_for_the_kernels_torch_will_run(env, caps):
    assert P.torch_isa_caps(env) == caps
    native, evidence = P.cpu_native_bf16(SAPPHIRE_RAPIDS, "x86_64", env=env)
    assert native is not caps
    if caps:
        assert "capped below it" in evidence and caps[0] in evidence


def test_the_avx2_stand_in_trains_in_float32_by_itself(tmp_path):
    """A recipe under torch's AVX2 caps, in its own process: on any CPU (AMX, avx512_bf16 or a real
    AVX2 one) `dtype: auto` gives float32, and the run records it."""
    run_dir = tmp_path / "sft"
    env = {**AVX2_CAPS, "OMP_NUM_THREADS": "1", P.OVERRIDE: ""}  # VIRL_BF16 empty: the machine's own answer
    proc = run_entry(["python", "-m", "recipes.sft", "--config", "configs/sft/tiny.yaml", "--dtype", "auto",
                      "--output_dir", str(run_dir), "--max_steps", "2", "--save_strategy", "no"], env=env)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("[precision]"))
    assert line.startswith("[precision] float32 on the CPU: dtype auto;"), line
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["precision"]["dtype"] == "float32"
    assert info["precision"]["trainer"] == {"autocast": "none", "as_decided": True}  # read when training began
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx2 avx512_bf16\n")
    assert P.cpu_flags(str(cpuinfo)) == frozenset({"fpu", "sse", "avx2", "avx512_bf16"})
    assert P.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("value,native", [("0", False), ("off", False), ("1", True), ("true", True)])
def test_override_answers_for_the_hardware(monkeypatch, value, native):
    monkeypatch.setenv(P.OVERRIDE, value)
    assert P.native_bf16("cpu")[0] is native
    assert P.decide_for("auto", "cpu").dtype == ("bfloat16" if native else "float32")


def _fake_gpu(monkeypatch, name: str, capability: tuple[int, int], bf16: bool):
    """CUDA's answers as a machine with that GPU gives them (under Unsloth, emulation not counted)."""
    import torch

    monkeypatch.delenv(P.OVERRIDE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)


def test_a_t4_trains_in_fp16_instead_of_failing_at_parse(monkeypatch, capsys):
    # Unsloth's is_bf16_supported does not count emulation, so a bf16 config reaching
    # TrainingArguments on a T4 is refused while it is parsed; the decision hands it fp16 instead.
    _fake_gpu(monkeypatch, "Tesla T4", (7, 5), bf16=False)
    values = {"dtype": "auto", "device": "auto", "bf16": True, "fp16": False, "use_cpu": False}
    apply_precision(values)
    assert (values["fp16"], values["bf16"], values["use_cpu"]) == (True, False, False)
    out = capsys.readouterr().out
    assert "[precision] float16 on CUDA: dtype auto; Tesla T4 (compute capability 7.5) has no native bf16" in out
    assert "the config's bf16: true, fp16: false follows the decision" in out


def test_an_ampere_gpu_trains_in_bf16(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA A10G", (8, 6), bf16=True)
    values = {"dtype": "bfloat16", "device": "cuda", "bf16": None, "fp16": False, "use_cpu": False}
    assert apply_precision(values).dtype == "bfloat16"
    assert (values["fp16"], values["bf16"]) == (False, True)


def test_a_cpu_without_native_bf16_trains_in_float32(monkeypatch, capsys, no_gpu):
    from recipes.sft import ARGUMENT_TYPES

    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": frozenset({"avx", "avx2", "fma"}))
    monkeypatch.setattr(P.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(P.OVERRIDE, raising=False)
    _, targs, margs, _ = parse_args(ARGUMENT_TYPES, ["--config", "configs/sft/demo.yaml", "--output_dir", "unused"])
    assert (targs.bf16, targs.fp16, targs.use_cpu) == (False, False, True)
    out = capsys.readouterr().out
    assert "[precision] float32 on the CPU: dtype auto; the CPU has no native bf16 (AVX2" in out


def test_the_configs_own_flags_are_overruled_out_loud(monkeypatch, capsys):
    monkeypatch.setenv(P.OVERRIDE, "0")
    values = {"dtype": "auto", "device": "cpu", "bf16": True, "fp16": False, "use_cpu": False}
    choice = apply_precision(values)
    assert choice.dtype == "float32" and values == {"dtype": "auto", "device": "cpu", "bf16": False, "fp16": False,
                                                    "use_cpu": True}
    assert "the config's bf16: true follows the decision" in capsys.readouterr().out


def test_cuda_asked_of_a_cpu_machine_fails_before_parsing_finishes(no_gpu):
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        apply_precision({"device": "cuda", "dtype": "auto", "bf16": None, "fp16": False})
