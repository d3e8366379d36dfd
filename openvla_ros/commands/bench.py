"""`openvla-ros bench`: per-action latency of every available backend on one checkpoint (JSON).

Each backend runs in its own child process (`bench --worker BACKEND`), so peak RSS is per
backend and "did the runtime path import torch" is an observation of that process. The workers
stay loaded and the parent interleaves them in rounds (torch batch, onnxruntime batch, torch
batch, ...), so background load on a shared machine hits every backend alike: the numbers are
side by side from one run. Without `--onnx` the checkpoint is first exported (fp32) to a
temporary directory. Reported per backend: per-action latency p50/p95 (wall time of
`Policy.predict`, preprocessing and action decoding included), mean per-stage times, bytes
copied across the runtime boundary per decode step (runtime backends), peak RSS,
`torch_imported`, and `instruction_check_ms`: what checking a max_instruction_chars-long
instruction against the model costs (the policy node does it in its instruction callback).

With `--oft-checkpoint` (and optionally `--oft-onnx`) an OpenVLA-OFT model runs on the same
backends in the same interleaved rounds, reported under "oft": milliseconds per chunk, actions
per second (chunk length / chunk time) and the bytes copied across the runtime boundary per
chunk; "side_by_side" sets them against OpenVLA's milliseconds per action.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from openvla_ros.processing import DEFAULT_INSTRUCTION

REPLY = "BENCH "  # prefix of the worker's protocol lines on stdout (anything else is ignored)
OFT_PREFIX = "oft/"  # worker labels of the OpenVLA-OFT model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="Hugging Face-format OpenVLA checkpoint (torch backend)")
    parser.add_argument("--onnx", type=Path, help="export directory (default: export --checkpoint to a temp dir)")
    parser.add_argument("--om", type=Path, help="directory written by convert-om (om backend)")
    parser.add_argument("--backends", "--backend", dest="backends", default="torch,onnxruntime,om",
                        help="comma-separated backends to try (default: %(default)s); unavailable ones are reported")
    parser.add_argument("--iterations", type=int, default=20, help="timed actions per backend (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved rounds the iterations are split into (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed actions first (default: %(default)s)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch and ONNX Runtime alike (default: each library's own default)")
    parser.add_argument("--unnorm-key", help="norm stats key (default: the checkpoint's only key)")
    parser.add_argument("--oft-checkpoint", type=Path, help="OpenVLA-OFT checkpoint to run side by side")
    parser.add_argument("--oft-onnx", type=Path,
                        help="OFT export directory (default: export --oft-checkpoint to a temp dir)")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument("--out", type=Path, help="write the JSON report here instead of stdout")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: serve one backend over stdin/stdout
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)


def bench_image(seed: int = 0) -> np.ndarray:
    """A fixed 224x224 RGB frame (smooth gradient plus seeded noise) so every backend sees the same input."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:224, 0:224]
    base = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def peak_rss_mb() -> float:
    """This process's peak resident set size. VmHWM is reset by exec, unlike ru_maxrss, which keeps
    the parent's peak from before the fork (the parent may have loaded torch to export)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _reply(message: dict) -> None:
    print(REPLY + json.dumps(message), flush=True)


def _predictor(policy, instruction: str):
    """One inference call of `policy` on fixed inputs: an action, or for OpenVLA-OFT a chunk (from
    one fixed image per camera and the state in the middle of the proprio bounds)."""
    if not hasattr(policy, "predict_chunk"):
        image = bench_image()
        return lambda: policy.predict(image, instruction)
    images = [bench_image(seed) for seed in range(policy.layout.num_images)]
    bounds = policy.inputs.normalizer.proprio_bounds
    state = None if bounds is None else (bounds[0] + bounds[1]) / 2
    return lambda: policy.predict_chunk(images, instruction, state)


def _final_summary(policy, prediction, instruction: str) -> dict:
    if hasattr(policy, "predict_chunk"):
        summary = {"actions_per_chunk": int(prediction.actions.shape[0]), "first_action": prediction.action.tolist()}
        result = getattr(policy, "last_result", None)
        if result is not None:
            summary["transfers"] = {"bytes_per_chunk": result.transfers.total,
                                    "to_runtime": result.transfers.to_runtime, "to_host": result.transfers.to_host}
        return summary
    summary = {"action_token_ids": prediction.action_token_ids if prediction else [],
               "instruction_check_ms": instruction_check_ms(policy, instruction)}
    generation = getattr(policy, "last_generation", None)
    if generation is not None:
        summary["transfers"] = _transfer_summary(generation, policy.kv_buffer_names)
    return summary


def serve(backend: str, model_dir: Path, unnorm_key: str | None, instruction: str, warmup: int,
          threads: int | None) -> None:
    """Worker: load one backend, warm up, then answer `run N` (timed actions) and `done` (summary)."""
    from openvla_ros.policy import load_policy

    options = {}
    if threads is not None and backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif threads is not None and backend == "onnxruntime":
        options["intra_op_threads"] = threads
    t0 = time.perf_counter()
    policy = load_policy(backend, model_dir, unnorm_key=unnorm_key, **options)
    load_s = time.perf_counter() - t0
    predict = _predictor(policy, instruction)
    prediction = None
    try:
        for _ in range(warmup):
            prediction = predict()
        _reply({"ready": True, "load_s": round(load_s, 3)})
        for line in sys.stdin:
            command = line.split()
            if command[0] == "done":
                break
            latencies, stages = [], []
            for _ in range(int(command[1])):
                t0 = time.perf_counter()
                prediction = predict()
                latencies.append((time.perf_counter() - t0) * 1e3)
                stages.append(prediction.timings_ms)
            _reply({"latencies": latencies, "stages": stages})
        summary = _final_summary(policy, prediction, instruction)
    finally:
        policy.close()
    _reply({**summary, "peak_rss_mb": peak_rss_mb(), "torch_imported": "torch" in sys.modules})


def instruction_check_ms(policy, instruction: str, repeats: int = 200) -> dict:
    """What the policy node's instruction callback costs at most: `check_instruction` (text checks,
    tokenizing, the prompt budget) on an instruction of max_instruction_chars characters."""
    from openvla_ros.input_checks import DEFAULT_MAX_INSTRUCTION_CHARS, InstructionRejected

    text = " ".join([instruction] * DEFAULT_MAX_INSTRUCTION_CHARS)[:DEFAULT_MAX_INSTRUCTION_CHARS]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            policy.check_instruction(text)
        except InstructionRejected:  # usually over an export's budget at this length: the cost is what counts
            pass
        times.append((time.perf_counter() - t0) * 1e3)
    return {"chars": len(text), "p50": round(float(np.percentile(times, 50)), 4),
            "max": round(float(np.max(times)), 4)}


def _transfer_summary(generation, kv_names: tuple[str, ...]) -> dict:
    steps = generation.decode_step_transfers
    return {
        "bytes_per_action": generation.transfers.total,
        "decode_steps": len(steps),
        "bytes_per_decode_step": max((s.total for s in steps), default=0),
        "kv_cache_bytes_per_decode_step": max((sum(s.bytes_of(n) for n in kv_names) for s in steps), default=0),
        "to_runtime_per_decode_step": steps[0].to_runtime if steps else {},
        "to_host_per_decode_step": steps[0].to_host if steps else {},
    }


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, label: str, backend: str, model_dir: Path, args: argparse.Namespace) -> None:
        command = [sys.executable, "-m", "openvla_ros.cli", "bench", "--worker", backend, "--model-dir",
                   str(model_dir), "--warmup", str(args.warmup), "--instruction", args.instruction]
        if args.unnorm_key and not label.startswith(OFT_PREFIX):
            command += ["--unnorm-key", args.unnorm_key]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        self.label = label
        # stderr goes to a file: a chatty worker must never block on a full pipe nobody reads.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True)
        self.latencies: list[float] = []
        self.stages: list[dict[str, float]] = []

    def receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        self.proc.wait()
        self.stderr.seek(0)
        lines = (self.stderr.read().strip() or "exited without output").splitlines()
        raise RuntimeError(lines[-1])

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def _summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {"p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3),
            "mean": round(float(v.mean()), 3), "min": round(float(v.min()), 3), "n": int(v.size)}


def _measure(dirs: dict[str, Path], args: argparse.Namespace) -> dict[str, dict]:
    """Start the workers, run the interleaved rounds, collect each worker's result (keyed by label:
    the backend, or `oft/<backend>`)."""
    results: dict[str, dict] = {}
    workers: list[_Worker] = []
    try:
        for label, model_dir in dirs.items():
            print(f"[bench] {label}: loading + {args.warmup} warmup runs ...", file=sys.stderr)
            worker = _Worker(label, label.removeprefix(OFT_PREFIX), model_dir, args)
            try:
                results[label] = {"available": True, "load_s": worker.receive()["load_s"]}
                workers.append(worker)
            except RuntimeError as exc:
                results[label] = {"available": False, "reason": str(exc)}
                worker.close()
        per_round = [len(r) for r in np.array_split(np.arange(args.iterations), args.rounds) if len(r)]
        for i, count in enumerate(per_round, 1):
            print(f"[bench] round {i}/{len(per_round)}: {count} actions per backend", file=sys.stderr)
            for worker in workers:
                worker.send(f"run {count}")
                reply = worker.receive()
                worker.latencies += reply["latencies"]
                worker.stages += reply["stages"]
        for worker in workers:
            worker.send("done")
            stage_names = dict.fromkeys(k for s in worker.stages for k in s)
            results[worker.label].update({
                "latency_ms": _summary(worker.latencies),
                "stages_ms": {k: round(float(np.mean([s.get(k, 0.0) for s in worker.stages])), 3) for k in stage_names},
                **worker.receive(),
            })
    finally:
        for worker in workers:
            worker.close()
    return results


def _model_dirs(args: argparse.Namespace, backends: list[str], scratch: Path) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    if "torch" in backends:
        if args.checkpoint is None:
            raise ValueError("--checkpoint is required for the torch backend")
        dirs["torch"] = args.checkpoint
    if "onnxruntime" in backends:
        if args.onnx is None:
            if args.checkpoint is None:
                raise ValueError("give --onnx DIR, or --checkpoint DIR to export one")
            from openvla_ros.export import export_onnx

            print(f"[bench] exporting {args.checkpoint} to ONNX (fp32) ...", file=sys.stderr)
            args.onnx = export_onnx(args.checkpoint, scratch / "onnx", dtype="fp32", progress=None)
        dirs["onnxruntime"] = args.onnx
    if "om" in backends and args.om is not None:
        dirs["om"] = args.om
    if args.oft_checkpoint is not None or args.oft_onnx is not None:
        if "torch" in backends and args.oft_checkpoint is not None:
            dirs[OFT_PREFIX + "torch"] = args.oft_checkpoint
        if "onnxruntime" in backends:
            if args.oft_onnx is None:
                from openvla_ros.export import export_onnx

                print(f"[bench] exporting {args.oft_checkpoint} to ONNX (fp32) ...", file=sys.stderr)
                args.oft_onnx = export_onnx(args.oft_checkpoint, scratch / "oft_onnx", dtype="fp32", progress=None)
            dirs[OFT_PREFIX + "onnxruntime"] = args.oft_onnx
    return dirs


def _side_by_side(openvla: dict[str, dict], oft: dict[str, dict]) -> dict[str, dict]:
    """Per backend with both models: OpenVLA's ms per action against OFT's ms per chunk."""
    rows = {}
    for backend, result in oft.items():
        base = openvla.get(backend, {})
        if not (result.get("available") and base.get("available")):
            continue
        chunk_ms, action_ms = result["latency_ms"]["p50"], base["latency_ms"]["p50"]
        rows[backend] = {"openvla_ms_per_action_p50": action_ms, "oft_ms_per_chunk_p50": chunk_ms,
                         "oft_actions_per_chunk": result["actions_per_chunk"],
                         "openvla_actions_per_second": round(1e3 / action_ms, 3),
                         "oft_actions_per_second": result["actions_per_second"],
                         "oft_throughput_ratio": round(result["actions_per_second"] * action_ms / 1e3, 2)}
        if "transfers" in result and "transfers" in base:
            rows[backend].update(openvla_bytes_per_action=base["transfers"]["bytes_per_action"],
                                 oft_bytes_per_chunk=result["transfers"]["bytes_per_chunk"])
    return rows


def run(args: argparse.Namespace) -> int:
    if args.worker:
        serve(args.worker, args.model_dir, args.unnorm_key, args.instruction, args.warmup, args.threads)
        return 0
    if args.iterations < 1 or args.warmup < 0 or args.rounds < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError("--iterations, --rounds and --threads must be >= 1 and --warmup >= 0")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"torch", "onnxruntime", "om"})
    if unknown:
        raise ValueError(f"unknown backends {unknown}; expected torch, onnxruntime, om")
    with tempfile.TemporaryDirectory(prefix="openvla-bench-") as scratch:
        exported_here, oft_exported_here = args.onnx is None, args.oft_onnx is None
        dirs = _model_dirs(args, backends, Path(scratch))
        results = _measure(dirs, args)
    for backend in backends:
        results.setdefault(backend, {"available": False, "reason": "no --om directory given (convert-om output)"})
    oft = {label.removeprefix(OFT_PREFIX): results.pop(label)
           for label in list(results) if label.startswith(OFT_PREFIX)}
    for result in oft.values():
        if result.get("available"):
            result["actions_per_second"] = round(result["actions_per_chunk"] * 1e3 / result["latency_ms"]["p50"], 3)
    report = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "onnx": "(exported to a temporary directory)" if exported_here and "onnxruntime" in dirs else str(args.onnx),
        "instruction": args.instruction,
        "iterations": args.iterations,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "backends": {b: results[b] for b in backends},
    }
    if oft:
        report["oft"] = {"checkpoint": str(args.oft_checkpoint) if args.oft_checkpoint else None,
                         "onnx": "(exported to a temporary directory)" if oft_exported_here else str(args.oft_onnx),
                         "backends": oft,
                         "side_by_side": _side_by_side(results, oft)}
    ok = {b: r for b, r in results.items() if r.get("available")}
    if "torch" in ok:
        report["speedup_vs_torch_p50"] = {
            b: round(ok["torch"]["latency_ms"]["p50"] / r["latency_ms"]["p50"], 2)
            for b, r in ok.items() if b != "torch"
        }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"[bench] wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0 if ok else 1
