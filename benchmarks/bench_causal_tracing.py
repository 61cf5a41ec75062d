"""Benchmark of issue 14: causal tracing through the batched engine versus ROME's own loop.

Measured side by side in one run on the same machine, with the same noise:

- (a) ROME's loop (:func:`patchscopes.experiments.originals.rome_causal_trace`): one forward per
  (token, layer) cell, the clean run and the noise samples as the rows of one batch;
- (b) :func:`patchscopes.causal_trace` on the batched engine: one corrupted base run per noise sample, each
  restored cell running only the tokens from its position on and the blocks above its layer.

Both give p(answer) for every cell; the script checks they agree (the largest difference is printed) and
prints the ratio of the times, wall-clock and CPU (the process's CPU time, which other programs on a busy
machine do not inflate). Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_causal_tracing.py [--model smollm2-135m] [--samples 10]
        [--kind state] [--threads 1] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import patchscopes as ps
from patchscopes.experiments.causal_tracing import causal_trace, embedding_std, noise_tensor
from patchscopes.experiments.originals import rome_causal_trace
from patchscopes.scope import token_span

FACTS = [
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower"),
    ("Miles Davis plays the", "Miles Davis"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--kind", default="state", choices=["state", "mlp", "attn"])
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="time the engine this many times (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--facts", type=int, default=len(FACTS), help="how many of the built-in facts to trace")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ps.load_model(args.model, device=args.device)
    scale = 3 * embedding_std(model)
    rows = []
    for prompt, subject in FACTS[: args.facts]:
        ids = model.encode(prompt)
        span = token_span(model, prompt, ids, subject, "subject")
        noise = noise_tensor(model, len(span), args.samples, scale, seed=0)
        kind = None if args.kind == "state" else args.kind

        start, cpu = time.perf_counter(), time.process_time()
        p_clean, p_corrupted, table = rome_causal_trace(model, ids, (span[0], span[-1] + 1),
                                                        _answer(model, ids), noise, kind, args.window)
        rome_s, rome_cpu = time.perf_counter() - start, time.process_time() - cpu

        times, cpus = [], []
        for _ in range(args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            trace = causal_trace(model, prompt, subject, kind=args.kind, window=args.window,
                                 noise_samples=args.samples, noise=noise)
            times.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        engine_s, engine_cpu = statistics.median(times), statistics.median(cpus)
        diff = float((torch.from_numpy(trace.p_restored) - table).abs().max())
        row = {
            "prompt": prompt, "subject": subject, "tokens": len(ids), "layers": model.num_layers,
            "samples": args.samples, "kind": args.kind, "answer": trace.answer, "rome_loop_s": round(rome_s, 2),
            "engine_s": round(engine_s, 2), "speedup": round(rome_s / engine_s, 1),
            "rome_loop_cpu_s": round(rome_cpu, 2), "engine_cpu_s": round(engine_cpu, 2),
            "cpu_speedup": round(rome_cpu / engine_cpu, 1),
            "max_abs_diff_p_restored": diff, "p_clean_diff": abs(trace.p_clean - p_clean),
            "p_corrupted_diff": abs(trace.p_corrupted - p_corrupted),
        }
        rows.append(row)
        print(f"{prompt!r} ({len(ids)} tokens × {model.num_layers} layers × {args.samples} samples, {args.kind}): "
              f"ROME loop {rome_s:.1f} s, engine {engine_s:.1f} s, {rome_s / engine_s:.1f}× faster "
              f"(CPU time {rome_cpu:.1f} s vs {engine_cpu:.1f} s, {rome_cpu / engine_cpu:.1f}×); "
              f"largest difference in p_restored {diff:.2e}")
    total_rome = sum(r["rome_loop_s"] for r in rows)
    total_engine = sum(r["engine_s"] for r in rows)
    cpu_rome = sum(r["rome_loop_cpu_s"] for r in rows)
    cpu_engine = sum(r["engine_cpu_s"] for r in rows)
    print(f"total: ROME loop {total_rome:.1f} s, engine {total_engine:.1f} s, {total_rome / total_engine:.1f}× faster; "
          f"CPU time {cpu_rome:.1f} s vs {cpu_engine:.1f} s, {cpu_rome / cpu_engine:.1f}×")
    if args.json:
        info = {"model": args.model, "threads": torch.get_num_threads(), "device": args.device,
                "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": info, "facts": rows, "speedup": total_rome / total_engine,
                       "cpu_speedup": cpu_rome / cpu_engine}, f, indent=1)


def _answer(model, ids) -> int:
    """The model's top prediction on the clean prompt (as ROME takes it)."""
    with torch.no_grad():
        logits = model.hf(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1]
    return int(logits.argmax())


if __name__ == "__main__":
    main()
