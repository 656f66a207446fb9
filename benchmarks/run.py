"""``make bench``: SFT throughput side by side with TRL, SFT beside a busy process, re-run cost, quantization and memory,
and data prep of a 1 M-row drop (rows/s, peak RSS, every defect in the quarantine).

Prints one table per part and writes benchmarks/results.json. Each training configuration runs
in its own process. ``--quick`` shrinks everything (a smoke run, not figures to quote).
``--device cuda`` (``make gpu-bench``) runs the throughput part on the GPU instead: builtin:llama-1b,
ours against TRL's defaults and TRL's tuned fast path, MFU against a bf16 GEMM timed on that GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from llm_assets.markdown import markdown_table
from llm_assets.training.hardware import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent
SHARED_SFT = ROOT.parent / "shared" / "data" / "sft" / "t0_mixture.jsonl"
RESULTS = Path(__file__).resolve().parent / "results.json"


def gemm_flops(n: int = 2048, threads: int = 2, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n x n matmul on this machine, best of ``repeats`` (a shared VM's rate wanders: the best is
    what the hardware can do, and the throughput part measures before and after its runs and keeps the higher)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cuda_gemm_flops(n: int = 8192, repeats: int = 10) -> float:
    """bf16 FLOP/s of an n x n x n matmul on the GPU, best of ``repeats`` after warm-up (the rate MFU is measured against)."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda"), torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    names = [x.split(":", 1)[1].strip() for x in info.read_text().splitlines() if x.startswith("model name")] if info.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


def sft_rows(limit: int, source: Path = SHARED_SFT) -> tuple[list[dict], str]:
    """Canonical training rows, validated the way the sft_dataset asset validates them (the demo's when ``source`` is absent)."""
    from llm_assets.data.pipeline import validate_drop

    if source.exists():
        name, data = source.name, source.read_bytes()
    else:
        import tempfile

        from llm_assets.demo_data import write_demo_drops

        path = next(p for p in write_demo_drops(Path(tempfile.mkdtemp())) if p.parent.name == "sft")
        name, data = path.name, path.read_bytes()
    df = validate_drop("sft", name, data).dataset
    rows = [{"prompt": [dict(m) for m in r["prompt"]], "completion": r["completion"]}
            for r in df[df["split"] == "train"].sort_values("row_hash").to_dict("records")]
    return rows[:limit], name


def build_workdir(work: Path, rows: list[dict], arch: dict | None, max_length: int, base: str = "builtin:tiny") -> dict:
    """The rows and a builtin model trained on them: builtin:tiny at ``arch``, or a named shape (``arch`` None)."""
    from llm_assets.recipes import ModelGroup
    from llm_assets.training.builtin import build_builtin, render_chat

    work.mkdir(parents=True, exist_ok=True)
    (work / "rows.json").write_text(json.dumps(rows))
    texts = [render_chat(r["prompt"] + [{"role": "assistant", "content": r["completion"]}]) for r in rows]
    model = ModelGroup(base=base, seed=0, **({"architecture": arch} if arch else {}))
    return build_builtin(model, texts, max_length, output_dir=work / "model")


def run_config(config: str, work: Path, steps: int, extra: list[str], env: dict[str, str] | None = None) -> dict:
    """One configuration of benchmarks.sft_throughput in its own process (``env``: its whole environment, default ours)."""
    out = work / f"{config}.json"
    cmd = [sys.executable, "-m", "benchmarks.sft_throughput", config, "--workdir", str(work), "--steps", str(steps), "--out", str(out), *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "wall_s": time.perf_counter() - t}


def throughput(args, work: Path) -> dict:
    """CPU: a 7 M builtin:tiny, MFU against the fp32 GEMM. GPU: builtin:llama-1b, MFU against the GPU's bf16 GEMM."""
    rows, source = sft_rows(args.rows, args.sft_file)
    cuda = args.device == "cuda"
    if cuda:
        base, arch, configs = "builtin:llama-1b", None, ("ours", "trl_default", "trl_tuned")
    else:
        base, configs = "builtin:tiny", ("ours", "trl_default", "trl_cpu", "trl_packing")
        arch = dict(hidden_size=256, intermediate_size=768, num_layers=6, num_heads=8, vocab_size=8192)
    info = build_workdir(work, rows, arch, args.max_length, base)

    def gemms() -> tuple[float, float]:
        if cuda:
            bf16 = cuda_gemm_flops()
            return bf16, bf16
        return gemm_flops(threads=args.threads), gemm_flops(threads=args.threads, dtype=torch.bfloat16)

    gemm, gemm_bf16 = gemms()
    common = ["--batch", str(args.batch), "--max-length", str(args.max_length), "--threads", str(args.threads),
              "--device", args.device, "--model-base", base]
    results = {}
    for config in configs:
        results[config] = r = run_config(config, work, args.steps, common)
        print(f"  {config}: {r['trainable_tokens_per_s']:.0f} trainable tokens/s", flush=True)
    gemm, gemm_bf16 = (max(a, b) for a, b in zip((gemm, gemm_bf16), gemms()))
    for r in results.values():  # on a GPU every configuration's matmuls run in bf16: MFU is against the bf16 GEMM
        r["mfu"] = 6 * r["parameters"] * r["trainable_tokens_per_s"] / gemm
        r["mfu_all_tokens"] = 6 * r["parameters"] * r["real_tokens_per_s"] / (gemm_bf16 if r["bf16_autocast"] else gemm)
    best_trl = max(v["trainable_tokens_per_s"] for k, v in results.items() if k != "ours")
    where = (f"{torch.cuda.get_device_name(0)}; GEMM {gemm / 1e12:.0f} TFLOP/s bf16" if cuda else
             f"{args.threads} threads; GEMM {gemm / 1e9:.1f} GFLOP/s fp32, {gemm_bf16 / 1e9:.1f} bf16")
    print(f"\nSFT throughput: {source}, {len(rows)} rows, {base} {info['parameters'] / 1e6:.1f} M parameters, max_length {args.max_length}, "
          f"batch {args.batch}, {args.steps} optimizer steps each, {where}")
    memory = ("peak GPU GB", lambda v: f"{v['peak_gpu_gb']:.1f}") if cuda else ("peak RSS MB", lambda v: f"{v['peak_rss_mb']:.0f}")
    print(markdown_table(
        ["config", "weights / autocast / ckpt / packing", "trainable tok/s", "real tok/s", "padding waste", memory[0],
         "first step s", "MFU", "MFU all tokens, own dtype"],
        [[k, f"{v['dtype']} / {'bf16' if v['bf16_autocast'] else '-'} / {'yes' if v['gradient_checkpointing'] else 'no'} / "
             f"{'yes' if v['packing'] else 'no'}", f"{v['trainable_tokens_per_s']:.0f}", f"{v['real_tokens_per_s']:.0f}",
          f"{v['padding_waste']:.1%}", memory[1](v), f"{v['time_to_first_step_s']:.1f}", f"{v['mfu']:.1%}",
          f"{v['mfu_all_tokens']:.1%}"] for k, v in results.items()]))
    if cuda:
        print("attention / liger: " + ", ".join(f"{k} {v['attn_implementation']} / {'yes' if v['liger'] else 'no'}" for k, v in results.items()))
    print(f"ours / best TRL: {results['ours']['trainable_tokens_per_s'] / best_trl:.2f}x. MFU = 6 x parameters x trainable tokens/s / "
          f"{'bf16' if cuda else 'fp32'} GEMM; MFU all tokens counts every real token processed, against the GEMM of the dtype the matmuls ran in")
    return {"source": source, "rows": len(rows), "model": base, "device": args.device, "parameters": info["parameters"],
            "gemm_flops": gemm, "gemm_flops_bf16": gemm_bf16, "steps": args.steps,
            "max_length": args.max_length, "batch": args.batch, "threads": args.threads, "configs": results,
            "ours_over_best_trl": results["ours"]["trainable_tokens_per_s"] / best_trl}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--parts", default=None, help="Default: throughput,contention,rerun,quantization,data_prep (cuda: throughput)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the throughput part on the GPU")
    p.add_argument("--sft-file", type=Path, default=SHARED_SFT, help="SFT rows (default ../shared's T0 mixture, else the demo's)")
    p.add_argument("--results", type=Path, default=None, help="Figures JSON (default benchmarks/results.json, cuda: results_cuda.json)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here")
    args.parts = args.parts or ("throughput" if args.device == "cuda" else "throughput,contention,rerun,quantization,data_prep")
    results_path = args.results or (RESULTS.with_name("results_cuda.json") if args.device == "cuda" else RESULTS)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of every load, here and in the child processes
    args.threads = min(2, os.cpu_count() or 1)
    args.rows, args.steps, args.batch, args.max_length = (200, 4, 4, 128) if args.quick else (2000, 30, 8, 256)
    if args.device == "cuda" and not args.quick:
        args.max_length = 1024  # a 1 B model on a GPU: sequences as long as real SFT's
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    out = {"machine": {"cpus": os.cpu_count(), "processor": cpu_model(), "native_bf16": cpu_has_native_bf16(),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}, "quick": args.quick}
    parts = args.parts.split(",")
    t0 = time.time()
    if "throughput" in parts:
        out["throughput"] = throughput(args, work / "throughput")
    if "contention" in parts:
        from benchmarks.contention import contention

        out["contention"] = contention(work / "contention", quick=args.quick)
    if "rerun" in parts:
        from benchmarks.rerun_cost import rerun_cost

        rerun = rerun_cost(work / "rerun", quick=args.quick)
        out["rerun"] = rerun["scenarios"]
    if "quantization" in parts:
        from benchmarks.quantization import quantization

        trained = Path(rerun["sft_dir"]) if "rerun" in parts else None
        out["quantization"] = quantization(work / "quantization", trained, rerun["eval_rows"] if trained else [],
                                           sft_rows(args.rows)[0], quick=args.quick)
    if "data_prep" in parts:
        from benchmarks.data_prep import data_prep

        out["data_prep"] = data_prep(work / "data_prep", quick=args.quick)
    out["seconds"] = time.time() - t0
    m = out["machine"]
    print(f"\nmachine: {m['cpus']} x {m['processor']} (native bf16: {'yes' if m['native_bf16'] else 'no'}), torch {m['torch']}")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwrote {results_path} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
