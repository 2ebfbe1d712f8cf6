"""`personseg bench [MODEL...] [--sizes 320x180,native] [--batch 1,16] [--backends torch,onnx,onnx-int8]`

Parameters, GFLOPs, latency and throughput of models on each backend; a markdown table on stdout and,
with --json, every number. A MODEL is a checkpoint path, a shipped model name, or a registered
architecture with random weights and optional kwargs: `unet_mobilenet_v3:alpha=0.3` (YAML values,
comma-separated: `unet:width=16` or `unet_mobilenet_v3:alpha=0.25,decoder_channels=[32,16,16,8,8]`).

What is timed: the model's forward pass on a random normalised input of (batch, 3, H, W), nothing
else (no resizing, no upsampling); `--warmup` runs first (excluded), then `--runs` timed runs. Sizes
are WIDTHxHEIGHT; `native` is the model's own input_size. Backends:
- torch: eager PyTorch fp32, channels_last, under inference_mode;
- onnx / onnx-int8: ONNX Runtime on a file exported into a temporary folder (`personseg export`'s
  code; int8 is QDQ static quantization calibrated on `--calib` images, or on random inputs by
  default, which is fine for speed and says nothing of accuracy);
- torch-fp16 / torch-bf16 / torch-compile: GPU only (skipped, and listed as such, on CPU).
Threads: torch.set_num_threads and ONNX Runtime's intra_op_num_threads both get `--threads`.
GFLOPs per image come from torch.utils.flop_counter, which counts a multiply-add as 2 FLOPs
(GMACs = GFLOPs / 2). Peak memory: on CPU the process's peak resident memory (VmHWM, reset before each
measurement) minus its resident memory before the warm-up, i.e. activations and workspace, weights
excluded; on GPU torch.cuda.max_memory_allocated above the memory held before (not for ONNX Runtime).
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

BACKENDS = ("torch", "onnx", "onnx-int8", "torch-fp16", "torch-bf16", "torch-compile")
GPU_ONLY = ("torch-fp16", "torch-bf16", "torch-compile")
_DTYPES = {"torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}
DEFAULT_SIZES = "320x180,native"
DEFAULT_BATCHES = "1,16"


# ---------------------------------------------------------------------------------------------------------
# Models and sizes


def resolve_model(spec: str) -> tuple[nn.Module, dict]:
    """(fp32 model in eval mode, description with arch, model_kwargs, input_size, mean, std, threshold)."""
    import yaml

    import personseg
    from personseg.checkpoint import IMAGENET_MEAN, IMAGENET_STD
    from personseg.models import create_model, list_models

    name, sep, kwargs_text = spec.partition(":")
    if sep or (name in list_models() and not Path(spec).exists()):
        kwargs = yaml.safe_load("{" + kwargs_text.replace("=", ": ") + "}") if kwargs_text else {}
        if not isinstance(kwargs, dict):
            raise ValueError(f"{spec}: expected NAME:key=value,key=value")
        torch.manual_seed(0)
        model = create_model(name, **kwargs)
        return model.eval(), {"arch": name, "model_kwargs": kwargs, "input_size": [320, 180],
                              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "threshold": 0.5,
                              "weights": "random"}
    predictor = personseg.load(spec, refine=False, backend="torch")  # a shipped name: its .pt
    if not isinstance(predictor.model, nn.Module):
        raise ValueError(f"{spec}: benchmark the checkpoint it came from; ONNX files are exported here")
    return predictor.model.to(memory_format=torch.contiguous_format).eval(), dict(predictor.info)


def parse_sizes(text: str, native: tuple[int, int]) -> list[tuple[int, int]]:
    """"320x180,native" -> [(320, 180), native] as (width, height), without repeats."""
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "native":
            size = (int(native[0]), int(native[1]))
        else:
            try:
                w, h = (int(v) for v in item.split("x"))
            except ValueError:
                raise ValueError(f"size {item!r}: expected WIDTHxHEIGHT such as 320x180, or native") from None
            size = (w, h)
        if size not in sizes:
            sizes.append(size)
    return sizes


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, size: tuple[int, int]) -> float:
    """GFLOPs of one (1, 3, H, W) forward pass; a multiply-add counts as 2 FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size[1], size[0])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------------------------------
# Measuring


class PeakMemory:
    """Peak memory above the level at entry, in MiB (`.mib`; None when it cannot be measured)."""

    def __init__(self, device: torch.device, track_cuda: bool = True):
        self.device, self.track_cuda, self.mib = device, track_cuda, None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            _release_free_memory()
            self.start = _rss_kib()
            self.hwm_reset = _reset_peak_rss()
            self.maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            if self.track_cuda:
                self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        elif self.hwm_reset:
            self.mib = max(0, _status_kib("VmHWM") - self.start) / 1024
        else:  # ru_maxrss only grows: what this measurement added above the process's earlier peak
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.maxrss) / 1024


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated delta (PyTorch backends only)"
    if _reset_peak_rss():
        return "peak RSS (VmHWM, reset per measurement) minus RSS before the warm-up"
    return "ru_maxrss increase (a lower bound: only growth above the process's earlier peak)"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _rss_kib() -> int:
    try:
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so the RSS baseline is memory in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def time_runs(fn, runs: int, warmup: int, sync=None) -> list[float]:
    """Seconds per call of `fn` over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def torch_net(model: nn.Module, backend: str, device: torch.device):
    """A copy of `model` for a PyTorch backend: on `device`, channels_last, in the backend's dtype."""
    net = copy.deepcopy(model).to(device, _DTYPES.get(backend, torch.float32), memory_format=torch.channels_last)
    return torch.compile(net) if backend == "torch-compile" else net  # compiles in the warm-up, per shape


def torch_runner(net, backend: str, device: torch.device, batch: int, size: tuple[int, int]):
    x = torch.randn(batch, 3, size[1], size[0], device=device, dtype=_DTYPES.get(backend, torch.float32))
    x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            net(x)
    return run


def onnx_runner(session, batch: int, size: tuple[int, int]):
    x = torch.randn(batch, 3, size[1], size[0])
    return lambda: session(x)


# ---------------------------------------------------------------------------------------------------------
# The benchmark


def benchmark(specs: list[str], sizes: str = DEFAULT_SIZES, batches: list[int] = (1, 16),
              backends: list[str] | None = None, threads: int | None = None, runs: int = 20, warmup: int = 3,
              device: str = "auto", calib: str | None = None, log=None) -> dict:
    """Measure every model x size x batch x backend; returns {"env", "models", "results", "skipped"}
    (plain data, the --json file). `log(str)` gets progress lines."""
    from personseg.predict import resolve_device

    log = log or (lambda message: None)
    dev = resolve_device(device)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    backends = list(backends or default_backends(dev))
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    out = {"env": environment(dev, threads), "models": [], "results": [], "skipped": []}
    ort_missing = _missing_onnx()
    with tempfile.TemporaryDirectory(prefix="personseg-bench-") as tmp:
        for index, spec in enumerate(specs):
            model, info = resolve_model(spec)
            model_sizes = parse_sizes(sizes, info["input_size"])
            entry = {"model": spec, "arch": info["arch"], "model_kwargs": info.get("model_kwargs", {}),
                     "weights": info.get("weights", "checkpoint"), "input_size": list(info["input_size"]),
                     "params": count_parameters(model),
                     "gflops": {f"{w}x{h}": gflops(model, (w, h)) for w, h in model_sizes}}
            out["models"].append(entry)
            runners = {}  # backend -> torch net or ONNX Runtime session, built once per model
            for backend in backends:
                reason = _skip_reason(backend, dev, ort_missing)
                if reason:
                    out["skipped"].append({"model": spec, "backend": backend, "reason": reason})
                    log(f"{spec} {backend}: skipped ({reason})")
                    continue
                if backend.startswith("onnx"):
                    runners[backend] = _onnx_session(model, info, backend, Path(tmp) / f"m{index}",
                                                     dev, threads, calib, model_sizes[-1])
                else:
                    runners[backend] = torch_net(model, backend, dev)
            for w, h in model_sizes:
                for batch in batches:
                    for backend, runner in runners.items():
                        row = _measure(runner, backend, dev, batch, (w, h), runs, warmup)
                        row.update(model=spec, threads=threads, gflops=entry["gflops"][f"{w}x{h}"])
                        out["results"].append(row)
                        log(f"{spec} {backend} {w}x{h} batch {batch}: median {row['median_ms']:.2f} ms, "
                            f"{row['images_per_s']:.1f} images/s")
            del runners
    return out


def default_backends(device: torch.device) -> list[str]:
    return ["torch", "onnx", "onnx-int8"] + (list(GPU_ONLY) if device.type == "cuda" else [])


def environment(device: torch.device, threads: int) -> dict:
    import personseg

    env = {"personseg": personseg.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
           "device": str(device), "threads": threads, "memory_method": memory_method(device),
           "flops_note": "torch.utils.flop_counter: 2 FLOPs per multiply-add (GMACs = GFLOPs / 2), per image",
           "timing_note": "forward pass only, random normalised input; warm-up runs excluded"}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _missing_onnx() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name} not installed: pip install 'personseg[onnx]'"
    return None


def _skip_reason(backend: str, device: torch.device, ort_missing: str | None) -> str | None:
    if backend in GPU_ONLY and device.type != "cuda":
        return "GPU only"
    if backend.startswith("onnx") and ort_missing:
        return ort_missing
    return None


def _onnx_session(model, info, backend, folder: Path, device, threads, calib, calib_size):
    from personseg.export import calibration_images, calibration_inputs, export_onnx, quantize_int8
    from personseg.predict import InputSpec
    from personseg.onnx_backend import OnnxModel

    fp32 = folder / "model.onnx"
    if not fp32.exists():
        export_onnx(model, info, fp32, check=False)  # `personseg export` is where parity is checked
    path = fp32
    if backend == "onnx-int8":
        path = folder / "model.int8.onnx"
        if calib:
            paths = calibration_images(calib, 16)
            inputs = list(calibration_inputs(paths, InputSpec.from_info(info)))
        else:
            generator = torch.Generator().manual_seed(0)
            inputs = [torch.randn(1, 3, calib_size[1], calib_size[0], generator=generator).numpy() for _ in range(4)]
        quantize_int8(fp32, path, inputs, calibration=calib or "random inputs")
    return OnnxModel(path, device=device, threads=threads)


def _measure(runner, backend, device, batch, size, runs, warmup) -> dict:
    is_torch = not backend.startswith("onnx")
    on_gpu = device.type == "cuda" and (is_torch or "CUDAExecutionProvider" in runner.providers)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if is_torch:
        fn = torch_runner(runner, backend, device, batch, size)
        provider = "PyTorch " + ("CUDA" if device.type == "cuda" else "CPU")
    else:
        fn = onnx_runner(runner, batch, size)
        provider = runner.providers[0]
    with PeakMemory(device, track_cuda=is_torch) as memory:
        times = time_runs(fn, runs, warmup, sync)
    ms = np.asarray(times) * 1000
    median = float(np.median(ms))
    return {"backend": backend, "precision": _precision(backend), "device": "cuda" if on_gpu else "cpu",
            "provider": provider, "size": list(size), "batch": batch, "runs": runs, "warmup": warmup,
            "median_ms": median, "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
            "images_per_s": batch * 1000 / median, "peak_mem_mib": memory.mib}


def _precision(backend: str) -> str:
    return {"onnx-int8": "int8", "torch-fp16": "fp16", "torch-bf16": "bf16"}.get(backend, "fp32")


# ---------------------------------------------------------------------------------------------------------
# Output


def markdown_table(result: dict) -> str:
    models = {m["model"]: m for m in result["models"]}
    env = result["env"]
    runs = result["results"][0]["runs"] if result["results"] else 0
    caption = (f"{env['device']} ({env['cpu']}), {env['threads']} threads, torch {env['torch']}, "
               f"onnxruntime {env.get('onnxruntime')}; GFLOPs per image, 2 FLOPs per multiply-add; "
               f"latency per batch, forward only, {runs} runs after warm-up; memory: {env['memory_method']}")
    lines = [caption,
             "",
             "| model | backend | size | batch | params (M) | GFLOPs | median ms | p90 ms | images/s | peak MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        m = models[r["model"]]
        mem = "-" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        lines.append(f"| {r['model']} | {r['backend']} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | "
                     f"{m['params'] / 1e6:.2f} | {r['gflops']:.2f} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['images_per_s']:.1f} | {mem} |")
    for s in result["skipped"]:
        lines.append(f"\nskipped: {s['model']} {s['backend']} ({s['reason']})")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: expected comma-separated integers such as 1,16") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text}: batch sizes must be positive")
    return values


def _backend_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="checkpoint paths, shipped names or NAME[:key=value,...] (default: the shipped default)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"WxH list, `native` = the model's (default: {DEFAULT_SIZES})")
    parser.add_argument("--batch", type=_int_list, default=_int_list(DEFAULT_BATCHES),
                        help="batch sizes (default: 1,16)")
    parser.add_argument("--backends", type=_backend_list, default=None,
                        help="comma-separated from " + ", ".join(BACKENDS) + " (default: torch,onnx,onnx-int8, "
                             "plus the GPU ones on a GPU)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch and ONNX Runtime "
                                                               "(default: torch's default)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: 3)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--calib", metavar="DATA_DIR", help="calibrate int8 on these images (default: random inputs)")
    parser.add_argument("--json", metavar="OUT.json", help="write every number here")


def run(args: argparse.Namespace) -> int:
    from personseg.predict import DEFAULT_MODEL

    if args.runs < 1 or args.warmup < 0:
        print("personseg bench: --runs must be at least 1 and --warmup at least 0", file=sys.stderr)
        return 2
    try:
        result = benchmark(args.models or [DEFAULT_MODEL], args.sizes, args.batch, args.backends, args.threads or None,
                           args.runs, args.warmup, args.device, args.calib,
                           log=lambda message: print(message, file=sys.stderr))
    except (OSError, ValueError) as e:
        print(f"personseg bench: {e}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    if args.json:
        from personseg.evaluate import write_text_atomic
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return 0
