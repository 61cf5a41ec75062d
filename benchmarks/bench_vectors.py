"""Benchmark of issue 22: describe_vectors (every feature × scale one row of one batched run, plus the
prefill-only signal pass) versus one Hugging Face ``generate`` per (feature, scale).

The features are random unit directions (the speed does not depend on what they mean), written at ``--layer``
at both placeholders of the self-explanation prompt, ``--scales`` scales each, ``--max-new-tokens`` greedy tokens
(no stop strings on either side, so both generate the same number of tokens unless EOS comes first).

- (a) the batched path: :func:`patchscopes.describe_vectors` on all ``features × scales`` rows, timed in its two
  parts: the generation (``signals=False``: every row in one batched run) and the selection signals' prefill-only
  pass (:func:`~patchscopes.experiments.vectors.selection_signals`); their sum is what is compared;
- (b) the baseline: ``model.hf.generate`` on one row at a time, the scaled direction written over block
  ``--layer``'s output at the placeholders during the prefill only (a forward hook). It is timed on the first
  ``--baseline-rows`` rows and extrapolated per row to all of them (the per-row time is steady: every row is
  the same prompt and token count); with ``--baseline-rows 0`` it runs on every row.

A sample of rows is checked to give the same text both ways. Prints the times, the ratio (b)/(a) and writes
``--json``. CPU times (the process's) are reported beside wall-clock times: on a shared, busy machine the CPU
time is the fairer one. Usage::

    python benchmarks/bench_vectors.py [--features 1000] [--scales 8] [--max-new-tokens 16] [--layer 3]
        [--baseline-rows 32] [--threads N] [--model smollm2-135m] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import patchscopes as ps
from patchscopes.experiments.vectors import AUTO_FACTORS, explanation_prompt, selection_signals, typical_norm


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def baseline_rows(lm: ps.LanguageModel, ids: tuple[int, ...], positions: tuple[int, ...], layer: int,
                  values: list[torch.Tensor], max_new_tokens: int) -> list[str]:
    """One ``generate`` per row: the value written over block ``layer``'s output at ``positions`` while the
    prompt is read (the first forward), then plain greedy decoding."""
    block = lm.arch.blocks[layer]
    texts = []
    prompt = torch.tensor([ids], device=lm.device)
    for value in values:
        def hook(module, args, output, value=value):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[1] < len(ids):  # a decoding step: the patch is in the cache already
                return output
            hidden = hidden.clone()
            hidden[0, list(positions)] = value.to(hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = block.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = lm.hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=lm.pad_token_id)
        finally:
            handle.remove()
        texts.append(lm.decode(out[0, len(ids):].tolist()))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--scales", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--baseline-rows", type=int, default=32)
    parser.add_argument("--check-rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None, help="Batch rows of the engine (default: its budget).")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = ps.load_model(args.model)
    torch.manual_seed(0)
    directions = torch.randn(args.features, lm.hidden_size)
    directions /= directions.norm(dim=1, keepdim=True)
    prompt = explanation_prompt(lm)
    unit = typical_norm(lm, prompt, args.layer)
    scales = [round(f * unit, 4) for f in AUTO_FACTORS[: args.scales]]
    if len(scales) < args.scales:
        scales += [round(unit * (4 + k), 4) for k in range(1, args.scales - len(scales) + 1)]
    n_rows = args.features * len(scales)
    budget = ps.BatchBudget(rows=args.rows) if args.rows else None
    print(f"{lm.name}: {args.features} features × {len(scales)} scales = {n_rows} rows, {args.max_new_tokens} new "
          f"tokens, layer {args.layer}, prompt of {len(prompt.ids)} tokens, threads {torch.get_num_threads()}")

    wall, cpu = clock()
    df = ps.describe_vectors(lm, directions, layer=args.layer, scales=scales, max_new_tokens=args.max_new_tokens,
                             signals=False, select=scales[0], options=ps.RunOptions(budget=budget))
    gen_wall, gen_cpu = (t1 - t0 for t1, t0 in zip(clock(), (wall, cpu)))
    wall, cpu = clock()
    selection_signals(lm, prompt, args.layer, directions, torch.tensor(scales).expand(args.features, len(scales)))
    sig_wall, sig_cpu = (t1 - t0 for t1, t0 in zip(clock(), (wall, cpu)))
    ours_wall, ours_cpu = gen_wall + sig_wall, gen_cpu + sig_cpu
    print(f"(a) describe_vectors, batched: generation {gen_wall:.1f} s wall, {gen_cpu:.1f} s CPU; signal pass "
          f"{sig_wall:.1f} s wall, {sig_cpu:.1f} s CPU; total {ours_wall:.1f} s wall, {ours_cpu:.1f} s CPU "
          f"({1000 * ours_cpu / n_rows:.1f} ms CPU a row)")

    values = [directions[i] * s for i in range(args.features) for s in scales]
    measured = n_rows if args.baseline_rows <= 0 else min(args.baseline_rows, n_rows)
    wall, cpu = clock()
    texts = baseline_rows(lm, prompt.ids, prompt.positions, args.layer, values[:measured], args.max_new_tokens)
    base_wall, base_cpu = (t1 - t0 for t1, t0 in zip(clock(), (wall, cpu)))
    per_wall, per_cpu = base_wall / measured, base_cpu / measured
    print(f"(b) one generate per row: {measured} rows in {base_wall:.1f} s wall, {base_cpu:.1f} s CPU "
          f"({1000 * per_wall:.1f} ms a row); for {n_rows} rows: {per_wall * n_rows:.1f} s wall"
          + (" (extrapolated)" if measured < n_rows else ""))
    same = sum(a == b for a, b in zip(texts[: args.check_rows], df["text"].tolist()[: args.check_rows]))
    checked = min(args.check_rows, measured)
    print(f"same text both ways: {same}/{checked} rows checked")
    ratio_wall, ratio_cpu = per_wall * n_rows / ours_wall, per_cpu * n_rows / ours_cpu
    print(f"ratio (b)/(a): {ratio_wall:.1f}× wall, {ratio_cpu:.1f}× CPU (goal ≥ 20×); generation alone "
          f"{per_wall * n_rows / gen_wall:.1f}× wall, {per_cpu * n_rows / gen_cpu:.1f}× CPU")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": lm.name, "features": args.features, "scales": scales, "rows": n_rows,
                       "max_new_tokens": args.max_new_tokens, "layer": args.layer,
                       "threads": torch.get_num_threads(), "machine": platform.platform(),
                       "ours_wall_s": ours_wall, "ours_cpu_s": ours_cpu,
                       "generation_wall_s": gen_wall, "generation_cpu_s": gen_cpu, "signals_wall_s": sig_wall,
                       "signals_cpu_s": sig_cpu, "baseline_rows_measured": measured,
                       "baseline_wall_s_per_row": per_wall, "baseline_cpu_s_per_row": per_cpu,
                       "ratio_wall": ratio_wall, "ratio_cpu": ratio_cpu, "same_text": [same, checked]}, f, indent=1)


if __name__ == "__main__":
    main()
