"""Benchmark of issues 14 and 20: causal tracing through the batched engine versus ROME's own loop.

For each kind (``state``, ``mlp``, ``attn``; all three by default) and each built-in fact, measured side by
side in one run on the same machine, with the same noise:

- (a) ROME's loop (:func:`patchscopes.experiments.originals.rome_causal_trace`): one forward per
  (token, layer) cell, the clean run and the noise samples as the rows of one batch;
- (b) :func:`patchscopes.causal_trace` on the batched engine: one corrupted base run per noise sample, each
  restored cell running only the tokens from its first write on, through the blocks from the first one its
  writes reach.

Both give p(answer) for every cell; the script checks they agree (the largest difference is printed) and
prints the ratio of the CPU times (the process's CPU time, which other programs on a busy machine do not
inflate; wall-clock times go to the JSON).

The floor of each kind is the work our method inherently needs, in token-layers (one token through one
block): per fact and noise sample, the corrupted base run (n tokens × L blocks) and, per cell at position i,
(n − i) tokens × (L − entry) blocks, where entry is l + 1 for a block state at layer l and the window's first
layer (ROME's ``[l - w//2, l + ceil(w/2))`` cut at the model's ends) for an MLP or attention window; plus
the clean run once. It is converted to CPU seconds at the model's measured token-layer throughput (a plain
batched forward of a few rows × 16 tokens, last position's logits only) and printed with the engine's ratio
to it. ROME's own count (every cell a full forward of n tokens × L blocks, the clean run and the noise samples
as rows) is printed beside it. Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_causal_tracing.py [--model smollm2-135m] [--samples 10]
        [--kind all|state|mlp|attn] [--window 10] [--facts 3] [--threads 1] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import patchscopes as ps
from patchscopes.experiments.causal_tracing import KINDS, causal_trace, embedding_std, noise_tensor, window_layers
from patchscopes.experiments.originals import rome_causal_trace
from patchscopes.scope import token_span

FACTS = [
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower"),
    ("Miles Davis plays the", "Miles Davis"),
    ("Michael Jordan plays the sport of", "Michael Jordan"),
]


def floor_token_layers(n: int, n_layers: int, samples: int, kind: str, window: int) -> int:
    """The token-layers our method needs for one fact of ``n`` tokens, every position traced: the clean run,
    and per noise sample the corrupted base run and each cell's tokens from its position on through the
    blocks from its entry on."""
    def entry(layer: int) -> int:
        return layer + 1 if kind == "state" else window_layers(layer, window, n_layers).start

    cells = sum((n - i) * (n_layers - entry(layer)) for i in range(n) for layer in range(n_layers))
    return n * n_layers + samples * (n * n_layers + cells)


def rome_token_layers(n: int, n_layers: int, samples: int) -> int:
    """ROME's token-layers for one fact: the first forward and one per cell, each of (samples + 1) rows × n
    tokens × L blocks."""
    return (n * n_layers + 1) * (samples + 1) * n * n_layers


def token_layer_throughput(model, rows: int = 4, tokens: int = 16, repeats: int = 5) -> float:
    """Token-layers per CPU second of the model's plain batched forward (random tokens, the last position's
    logits only): rows × tokens × layers / the fastest repeat's CPU time."""
    ids = torch.randint(100, 1000, (rows, tokens), device=model.device)
    mask = torch.ones_like(ids)
    best = float("inf")
    with torch.no_grad():
        model.forward(ids, attention_mask=mask, logits_to_keep=1)  # warm-up
        for _ in range(repeats):
            cpu = time.process_time()
            model.forward(ids, attention_mask=mask, logits_to_keep=1)
            best = min(best, time.process_time() - cpu)
    return rows * tokens * model.num_layers / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--kind", default="all", choices=["all", *KINDS])
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="time the engine this many times (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--facts", type=int, default=len(FACTS), help="how many of the built-in facts to trace")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    model = ps.load_model(args.model, device=args.device)
    n_layers = model.num_layers
    tlps = token_layer_throughput(model)
    print(f"{args.model}: {n_layers} layers, {torch.get_num_threads()} thread(s); plain batched forward "
          f"{tlps:,.0f} token-layers per CPU second (4 rows × 16 tokens)")
    scale = 3 * embedding_std(model)
    facts = []
    for prompt, subject in FACTS[: args.facts]:
        ids = model.encode(prompt)
        span = token_span(model, prompt, ids, subject, "subject")
        facts.append((prompt, subject, ids, span, _answer(model, ids),
                      noise_tensor(model, len(span), args.samples, scale, seed=0)))

    rows, summary = [], {}
    for kind in kinds:
        for prompt, subject, ids, span, answer_id, noise in facts:
            start, cpu = time.perf_counter(), time.process_time()
            p_clean, p_corrupted, table = rome_causal_trace(model, ids, (span[0], span[-1] + 1), answer_id, noise,
                                                            None if kind == "state" else kind, args.window)
            rome_s, rome_cpu = time.perf_counter() - start, time.process_time() - cpu

            times, cpus = [], []
            for _ in range(args.repeats):
                start, cpu = time.perf_counter(), time.process_time()
                trace = causal_trace(model, prompt, subject, kind=kind, window=args.window,
                                     noise_samples=args.samples, noise=noise)
                times.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
            engine_s, engine_cpu = statistics.median(times), statistics.median(cpus)
            diff = float((torch.from_numpy(trace.p_restored) - table).abs().max())
            n = len(ids)
            floor_tl = floor_token_layers(n, n_layers, args.samples, kind, args.window)
            row = {
                "kind": kind, "prompt": prompt, "tokens": n, "answer": trace.answer,
                "rome_cpu_s": round(rome_cpu, 2), "engine_cpu_s": round(engine_cpu, 2),
                "cpu_speedup": round(rome_cpu / engine_cpu, 2), "rome_wall_s": round(rome_s, 2),
                "engine_wall_s": round(engine_s, 2), "max_abs_diff": float(f"{diff:.3g}"),
                "p_clean_diff": float(f"{abs(trace.p_clean - p_clean):.3g}"),
                "p_corrupted_diff": float(f"{abs(trace.p_corrupted - p_corrupted):.3g}"),
                "floor_token_layers": floor_tl, "rome_token_layers": rome_token_layers(n, n_layers, args.samples),
                "floor_cpu_s": round(floor_tl / tlps, 2),
            }
            rows.append(row)
            print(f"  {kind:5} {prompt!r} ({n} tokens, answer {trace.answer!r}): ROME {rome_cpu:.1f} s, engine "
                  f"{engine_cpu:.1f} s CPU, {rome_cpu / engine_cpu:.1f}×; floor {floor_tl / tlps:.1f} s "
                  f"({engine_cpu * tlps / floor_tl:.2f}× it); largest difference {diff:.2e}")
        mine = [r for r in rows if r["kind"] == kind]
        rome_cpu = sum(r["rome_cpu_s"] for r in mine)
        engine_cpu = sum(r["engine_cpu_s"] for r in mine)
        floor_tl = sum(r["floor_token_layers"] for r in mine)
        rome_tl = sum(r["rome_token_layers"] for r in mine)
        summary[kind] = {
            "rome_cpu_s": round(rome_cpu, 2), "engine_cpu_s": round(engine_cpu, 2),
            "cpu_speedup": round(rome_cpu / engine_cpu, 2), "max_abs_diff": max(r["max_abs_diff"] for r in mine),
            "floor_token_layers": floor_tl, "floor_cpu_s": round(floor_tl / tlps, 2),
            "engine_over_floor": round(engine_cpu * tlps / floor_tl, 2), "rome_token_layers": rome_tl,
            "rome_over_floor_token_layers": round(rome_tl / floor_tl, 2),
            "rome_cpu_over_its_token_layers": round(rome_cpu * tlps / rome_tl, 2),
        }

    print(f"\n{len(facts)} facts × {args.samples} noise samples, window {args.window}, CPU seconds:")
    print(f"{'kind':6} {'ROME':>8} {'ours':>8} {'ratio':>7} {'max diff':>9} {'floor':>8} {'ours/floor':>10} "
          f"{'floor TL':>11} {'ROME TL':>11} {'ROME TL/floor':>13}")
    for kind, s in summary.items():
        print(f"{kind:6} {s['rome_cpu_s']:8.1f} {s['engine_cpu_s']:8.1f} {s['cpu_speedup']:6.2f}× "
              f"{s['max_abs_diff']:9.1e} {s['floor_cpu_s']:8.1f} {s['engine_over_floor']:9.2f}× "
              f"{s['floor_token_layers']:11,} {s['rome_token_layers']:11,} {s['rome_over_floor_token_layers']:12.1f}×")
    if args.json:
        info = {"model": args.model, "threads": torch.get_num_threads(), "device": args.device,
                "samples": args.samples, "window": args.window, "repeats": args.repeats,
                "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                "token_layers_per_cpu_s": round(tlps), "throughput_shape": "4 rows x 16 tokens, last logits only"}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": info, "kinds": summary, "facts": rows}, f, indent=1)
            f.write("\n")


def _answer(model, ids) -> int:
    """The model's top prediction on the clean prompt (as ROME takes it)."""
    with torch.no_grad():
        logits = model.hf(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1]
    return int(logits.argmax())


if __name__ == "__main__":
    main()
