"""llama.cpp's tools for GGUF exports, fetched from PyPI once and cached like the embedded model.

- **Converter.** `convert_hf_to_gguf.py` (with its `conversion/` package and its own `gguf-py`)
  ships inside the source distribution of `llama-cpp-python`. The PyPI `gguf` package is older
  than the converter needs, so the vendored `gguf-py` is used, in a separate process
  (`deploy/gguf_convert.py`) so it never meets the `gguf` that transformers imports. It writes
  f32/f16/bf16/q8_0 itself. Cached under

      $VIRL_CACHE/tools/llama.cpp-<version>/        (VIRL_CACHE defaults to ~/.cache/vi-rl)

  beside the downloaded sdist (kept: building `llama-quantize` needs the rest of its source).
- **Quantizer** for k-quants and the other llama.cpp types (q4_k_m, q5_k_m, q6_k, q4_0, ...), the
  first found of: `llama-quantize` on PATH; one built here on request (`build_quantize`, about
  13 min on 2 cores, cached under `$VIRL_CACHE/tools/llama-quantize-<version>/`); the C library of
  an installed `llama-cpp-python` (the `serve` extra), through its `llama_model_quantize`.

`make install` fetches the converter ahead (this module's command line, which prints where it is;
instant when cached), so exports and tests never need the network:

    python -m deploy.llamacpp --fetch [--cache_dir DIR]

An export that finds no converter still fetches it the first time, with one line saying so.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.cli import UserError
from core.embedded import default_cache_dir

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_REQUIREMENT = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
VENDOR = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
# What the converter needs from the sdist (paths under vendor/llama.cpp/).
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
COMPLETE_MARKER = ".complete"

# Output types the converter writes itself, and those that need llama.cpp's quantizer.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZER_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q4_k_m",
                   "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k")


def tools_dir(cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "tools"


def converter_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converter lives once fetched (whether or not it exists yet)."""
    return tools_dir(cache_dir) / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def _log(message: str) -> None:
    print(f"[llama.cpp] {message}", file=sys.stderr, flush=True)


def _run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """pip with this interpreter (one function, so tests can stand in for it)."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def download_sdist(cache_dir: str | Path | None = None) -> Path:
    """The llama-cpp-python sdist in the tools cache, downloaded with pip the first time (77 MB)."""
    target = tools_dir(cache_dir) / SDIST_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _log(f"fetching {SDIST_REQUIREMENT} from PyPI once (77 MB), the source of llama.cpp's GGUF converter "
         "(`make install` does this ahead)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".sdist-") as tmp:
        start = time.perf_counter()
        result = _run_pip(["download", "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
                           "--no-input", SDIST_REQUIREMENT, "-d", tmp])
        if result.returncode != 0:
            lines = [ln.strip() for ln in (result.stderr or result.stdout or "").splitlines() if ln.strip()]
            raise UserError(
                f"could not download {SDIST_REQUIREMENT} (the source of llama.cpp's GGUF converter) from "
                f"PyPI: {lines[-1] if lines else 'pip failed'}. GGUF export needs PyPI once (`make install` fetches "
                f"it); then it is cached in {target.parent}"
            )
        found = Path(tmp) / SDIST_NAME
        if not found.is_file():
            raise UserError(f"pip left no {SDIST_NAME} in its download folder; rerun the export")
        os.replace(found, target)
        _log(f"downloaded {SDIST_NAME} ({target.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
    return target


def extract(sdist: Path, dest: Path, members: tuple[str, ...] | None) -> None:
    """Extract `vendor/llama.cpp/` (or only `members` of it) from the sdist into `dest`."""
    with tarfile.open(sdist, "r:gz") as archive:
        wanted = []
        for info in archive.getmembers():
            if not info.name.startswith(VENDOR) or not (info.isfile() or info.isdir()):
                continue
            rel = info.name[len(VENDOR):]
            if rel and (members is None or any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in members)):
                info.name = rel  # vendor/llama.cpp/x -> x
                wanted.append(info)
        archive.extractall(dest, members=wanted, filter="data")


def ensure_converter(cache_dir: str | Path | None = None) -> Path:
    """The cached converter directory, fetched and extracted first if needed."""
    target = converter_dir(cache_dir)
    if (target / COMPLETE_MARKER).is_file():
        return target
    sdist = download_sdist(cache_dir)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        extract(sdist, staged, CONVERTER_FILES)
        if not (staged / "convert_hf_to_gguf.py").is_file() or not (staged / "gguf-py" / "gguf").is_dir():
            raise UserError(f"{SDIST_NAME} has no vendor/llama.cpp/convert_hf_to_gguf.py with gguf-py; "
                            "check that the package index serves the real PyPI file")
        marker = {"source": SDIST_REQUIREMENT, "files": list(CONVERTER_FILES),
                  "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (staged / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)  # an unfinished earlier extraction (no marker)
        os.replace(staged, target)
        _log(f"converter ready in {target}")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


def convert(model_dir: str | Path, outfile: Path, outtype: str, cache_dir: str | Path | None = None) -> str:
    """Run llama.cpp's converter on a Hugging Face model directory; returns its log."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"the converter writes {CONVERTER_TYPES}, not {outtype!r}")
    converter = ensure_converter(cache_dir)
    cmd = [sys.executable, "-m", "deploy.gguf_convert", str(converter), str(model_dir),
           "--outfile", str(outfile), "--outtype", outtype]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = (result.stdout or "") + (result.stderr or "")
    if result.returncode != 0 or not outfile.is_file():
        tail = [ln for ln in log.splitlines() if ln.strip()][-3:]
        raise UserError(f"llama.cpp's converter failed on {model_dir} (exit {result.returncode}): "
                        + " | ".join(tail))
    return log


# ------------------------------------------------------------------------------------ quantizer
@dataclass(frozen=True)
class Quantizer:
    """How k-quants are made here: `binary` (a llama-quantize executable) or `library`."""

    kind: str
    path: str | None = None

    def describe(self) -> str:
        return f"llama-quantize ({self.path})" if self.kind == "binary" else "llama-cpp-python's llama_model_quantize"


def built_quantize_path(cache_dir: str | Path | None = None) -> Path:
    return tools_dir(cache_dir) / f"llama-quantize-{LLAMA_CPP_PYTHON_VERSION}" / "llama-quantize"


def find_quantizer(cache_dir: str | Path | None = None) -> Quantizer | None:
    """The first available quantizer (see the module docstring), or None."""
    on_path = shutil.which("llama-quantize")
    if on_path:
        return Quantizer("binary", on_path)
    built = built_quantize_path(cache_dir)
    if built.is_file() and os.access(built, os.X_OK):
        return Quantizer("binary", str(built))
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    return Quantizer("library")


def build_quantize(cache_dir: str | Path | None = None, jobs: int | None = None) -> Path:
    """Compile llama.cpp's `llama-quantize` from the cached sdist (CMake and a C++ compiler;
    about 13 min on 2 cores) into the tools cache; returns the executable."""
    target = built_quantize_path(cache_dir)
    if target.is_file():
        return target
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise UserError(f"building llama-quantize needs {tool} (apt-get install cmake g++); "
                            "or install llama.cpp and put llama-quantize on PATH")
    sdist = download_sdist(cache_dir)
    jobs = jobs or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="llama-quantize-build-") as tmp:
        src = Path(tmp) / "llama.cpp"
        start = time.perf_counter()
        extract(sdist, src, None)
        build = Path(tmp) / "build"
        _log(f"building llama-quantize with {jobs} jobs (about 13 min on 2 cores)...")
        steps = [
            ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
             "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_NATIVE=OFF"],
            ["cmake", "--build", str(build), "--target", "llama-quantize", "-j", str(jobs)],
        ]
        for cmd in steps:
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                tail = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()][-5:]
                raise UserError("building llama-quantize failed: " + " | ".join(tail))
        built = next(build.rglob("llama-quantize"), None)
        if built is None:
            raise UserError("the llama.cpp build finished without a llama-quantize executable")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_target = target.with_name(".llama-quantize.tmp")
        shutil.copy2(built, tmp_target)
        os.replace(tmp_target, target)
        _log(f"built {target} in {time.perf_counter() - start:.0f} s")
    return target


def quantize(src: Path, dst: Path, qtype: str, quantizer: Quantizer) -> None:
    """Quantize a GGUF file (f16/bf16/f32) to `qtype` with llama.cpp's own quantizer."""
    if quantizer.kind == "binary":
        result = subprocess.run([quantizer.path, str(src), str(dst), qtype.upper()], capture_output=True, text=True)
        if result.returncode != 0 or not dst.is_file():
            tail = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()][-3:]
            raise UserError(f"llama-quantize {qtype} failed: " + " | ".join(tail))
        return
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None:
        raise UserError(f"this llama-cpp-python has no quantization type {qtype}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 2
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0 or not dst.is_file():
        raise UserError(f"llama_model_quantize {qtype} failed with status {status}")


def main(argv: list[str] | None = None) -> int:
    """Command line: `--fetch` ensures the converter is cached and prints its directory."""
    from core.cli import ArgumentParser

    parser = ArgumentParser(description="llama.cpp's GGUF converter, fetched once into the cache")
    parser.add_argument("--fetch", action="store_true", required=True,
                        help="download and unpack the converter unless it is cached; print its directory")
    parser.add_argument("--cache_dir", default=None, help="cache root (default: $VIRL_CACHE or ~/.cache/vi-rl)")
    args = parser.parse_args(argv)
    try:
        path = ensure_converter(args.cache_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
