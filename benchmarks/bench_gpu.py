"""The GPU path: the engine, a plain hooked loop and the model's raw throughput on a paper-shaped random model.

Measured side by side in one run, on one device:

- **the engine**: a token-identity sweep of ``--sentences`` English sentences × every position × every layer
  (l* = l), with the batch budget sized from the device's free memory (``patchscopes.engine.device_budget``)
  and with each ``--budgets ROWSxTOKENS`` given;
- **a plain hooked loop**: one source forward per sentence, then one hooked target forward per patch (the
  paper's code), timed on ``--naive-fraction`` of the patches and extrapolated; its top-1 tokens are compared
  with the engine's on every patch it ran;
- **the model's raw throughput**: its own batched forward (tokens/s), and the device's matrix throughput
  (a square matrix product, FLOP/s);
- **the arithmetic floor**: the multiply-adds the sweep needs (each source token through every block; the
  target's tokens before i* once, shared by every row; each patch through the blocks above its l* for one
  token, plus one unembedding; attention's multiply-adds over each context, each patch's query over the whole
  target included), at the device's matrix throughput. The goal on a GPU: the engine within 3× of it.
- **a long shared prefix** (issue 20): the same sweep with a ``--prefix-tokens`` (512) token few-shot identity
  target prompt (``word -> word`` lines ending in ``?``, built as ``bench_sweeps.long_identity_prompt``),
  timed with the device's budget, its floor with the prefix counted once, and its top-1 tokens checked
  against the hooked loop on ``--long-check`` patches; the floor ratios of the short and the long prefix are
  printed side by side, with each case's peak memory (torch's allocator on a GPU, the resident set on a CPU).
  ``--skip-long-prefix`` leaves it out.
- with ``--compile``: **the decode step** (``--compile-rows`` rows, one new token each over a cache of the
  target prompt, on a static cache), eager against ``torch.compile`` (``mode="reduce-overhead"``, that is
  CUDA graphs, on a GPU; the default mode on a CPU), with the compile time and the steps after which it pays.
  The engine's own decode runs eagerly over a dynamic, shared-prefix cache; this says what compiling a
  static-shape step would gain.

The model is a randomly initialised Llama of the shape of Llama-2-7B (``--shape 7b``: 32 layers, d = 4096) or
Llama-2-13B (``13b``: 40 layers, d = 5120), built directly on the device, with the SmolLM2 tokenizer
(``--tokenizer smollm2``) or a byte tokenizer (``byte``, no download); ``--shape small`` (4 layers, d = 256)
runs on a CPU in seconds, for the tests. Usage::

    python benchmarks/bench_gpu.py --shape 7b --device cuda --dtype bfloat16 --json gpu-7b.json
    python benchmarks/bench_gpu.py --shape 13b --device cuda --dtype bfloat16 --budgets 1024x65536 4096x262144
    python benchmarks/bench_gpu.py --shape 7b --device cuda --dtype bfloat16 --compile --json gpu-7b.json
    python benchmarks/bench_gpu.py --shape small --device cpu --tokenizer byte   # a check on a CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import patchscopes as ps
from patchscopes.engine import BatchBudget, device_budget

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweeps import SENTENCES, PeakMemory, hooks_on, long_identity_prompt, patch_hook

SHAPES = {
    # hidden size, layers, heads, key/value heads, MLP width (Llama-2's configurations)
    "small": (256, 4, 4, 4, 688),
    "7b": (4096, 32, 32, 32, 11008),
    "13b": (5120, 40, 40, 40, 13824),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_model(shape: str, device: str, dtype: torch.dtype, tokenizer: str) -> ps.LanguageModel:
    """A randomly initialised Llama of ``shape``, built on ``device`` (no copy through the CPU on a GPU)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if tokenizer == "smollm2":
        tok = ps.load_model("smollm2-135m").tokenizer
    else:
        from patchscopes.testing import byte_tokenizer

        tok = byte_tokenizer()
    d, layers, heads, kv_heads, mlp = SHAPES[shape]
    config = LlamaConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=mlp, vocab_size=len(tok),
                         max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return ps.LanguageModel(hf, tok, name=f"random-llama-{shape}")


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Multiply-add throughput of a square matrix product on ``device`` (FLOP/s, 2 per multiply-add)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def forward_throughput(lm: ps.LanguageModel, rows: int, tokens: int, repeats: int = 3) -> float:
    """Tokens per second of the model's own batched forward (random tokens, the last position's logits)."""
    ids = torch.randint(3, min(lm.vocab_size, 1000), (rows, tokens))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        lm.forward(ids[: max(1, rows // 8)], attention_mask=mask[: max(1, rows // 8)], logits_to_keep=1)
        sync(lm.device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            lm.forward(ids, attention_mask=mask, logits_to_keep=1)
            sync(lm.device)
            best = min(best, time.perf_counter() - start)
    return rows * tokens / best


def sweep_flops(lm: ps.LanguageModel, source_tokens: list[int], target_tokens: int) -> float:
    """FLOPs (2 per multiply-add) the token-identity sweep needs, with the target's prefix counted once:
    each source token through every block; the target's tokens before i* (its last token) through every
    block, once for all rows; each patch (l, i) through the blocks above l* = l for its one token, plus one
    unembedding. Attention adds 2·context·d multiply-adds per query and block (q·k, then the weighted sum of
    v): causal within a source and within the prefix, and each patch's query over the whole target (the
    prefix and itself)."""
    block = sum(p.numel() for p in lm.arch.blocks[0].parameters())
    head = lm.arch.unembed.weight.numel()
    d, layers = lm.hidden_size, lm.num_layers

    def causal(n: int) -> float:  # n tokens through every block, token t attending to t + 1 keys
        return layers * (n * block + d * n * (n + 1))

    macs = sum(causal(n) for n in source_tokens) + causal(target_tokens - 1)
    per_patch = sum((layers - 1 - layer) * (block + 2 * target_tokens * d) + head for layer in range(layers))
    macs += sum(source_tokens) * per_patch
    return 2 * macs


def naive_loop(lm: ps.LanguageModel, sentences: list[str], wanted: set[tuple[int, int, int]],
               prompt: str = ps.TOKEN_IDENTITY_PROMPT) -> dict:
    """The paper's loop on ``wanted`` (sentence, layer, position): one source forward per sentence reading
    every block, then one target forward of ``prompt`` per patch with a hook writing h at its last token."""
    target = torch.tensor([lm.encode(prompt)])
    last = target.shape[1] - 1
    answers = {}
    with torch.no_grad():
        for s, sentence in enumerate(sentences):
            ids = torch.tensor([lm.encode(sentence)])
            states: dict[int, torch.Tensor] = {}

            def grab(module, args, output, layer, states=states):
                states[layer] = (output[0] if isinstance(output, tuple) else output)[0]

            hooks = {layer: (lambda m, a, o, layer=layer: grab(m, a, o, layer)) for layer in range(lm.num_layers)}
            with hooks_on(lm.arch.blocks, hooks):
                lm.forward(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
            for layer in range(lm.num_layers):
                for pos in range(ids.shape[1]):
                    if (s, layer, pos) in wanted:
                        hook = patch_hook(torch.tensor([0]), torch.tensor([last]), states[layer][pos][None])
                        with hooks_on(lm.arch.blocks, {layer: hook}):
                            logits, _ = lm.forward(target, attention_mask=torch.ones_like(target), logits_to_keep=1)
                        answers[(s, layer, pos)] = int(logits[0, -1].argmax())
    return answers


def timed_sweep(lm: ps.LanguageModel, sentences: list[str], budget: BatchBudget, repeats: int,
                target_prompt: str | None = None):
    """Median and every wall time of the engine's sweep (top-1 only; the preset's target prompt unless
    ``target_prompt`` is given), and its last table."""
    times, frame = [], None
    for _ in range(max(1, repeats)):
        sync(lm.device)
        start = time.perf_counter()
        frame = ps.sweep(lm, sentences, "token-identity", layers="all", positions="all", top_k=1, budget=budget,
                         target_prompt=target_prompt)
        sync(lm.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, frame


def parse_budget(text: str) -> BatchBudget:
    rows, _, tokens = text.lower().partition("x")
    return BatchBudget(rows=int(rows), tokens=int(tokens) if tokens else None)


def run_benchmark(args: argparse.Namespace) -> dict:
    with torch.no_grad():
        return _run_benchmark(args)


def _run_benchmark(args: argparse.Namespace) -> dict:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    lm = random_model(args.shape, args.device, dtype, args.tokenizer)
    sentences = SENTENCES[: args.sentences]
    source_tokens = [len(lm.encode(s)) for s in sentences]
    target_tokens = len(lm.encode(ps.TOKEN_IDENTITY_PROMPT))
    patches = sum(source_tokens) * lm.num_layers
    report: dict = {
        "shape": args.shape, "device": str(lm.device), "dtype": args.dtype, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        "machine": platform.processor() or platform.machine(), "layers": lm.num_layers, "hidden": lm.hidden_size,
        "vocab": lm.vocab_size, "sentences": len(sentences), "source_tokens": sum(source_tokens),
        "patches": patches,
    }
    print(f"{lm.name}: {lm.num_layers} layers, d={lm.hidden_size}, vocab {lm.vocab_size}, {args.dtype} on "
          f"{report['gpu'] or lm.device}; {len(sentences)} sentences ({sum(source_tokens)} tokens) x every position "
          f"x {lm.num_layers} layers = {patches:,} patches")

    # The device and the model on their own.
    flops = matmul_flops(lm.device, dtype, args.matmul_size)
    tps = forward_throughput(lm, args.forward_rows, args.forward_tokens)
    need = sweep_flops(lm, source_tokens, target_tokens)
    floor = need / flops
    report.update(matmul_flops=flops, forward_tokens_per_s=tps, sweep_flop=need, floor_s=floor)
    print(f"  device: {flops / 1e12:,.2f} TFLOP/s (matrix product {args.matmul_size}^2); model's own forward: "
          f"{tps:,.0f} tokens/s ({args.forward_rows} rows x {args.forward_tokens} tokens)")
    print(f"  arithmetic floor: {need / 1e12:,.3f} TFLOP -> {floor * 1e3:,.1f} ms at that throughput")

    # The engine, with the device's budget and each budget asked for.
    budgets = [("device", device_budget([lm]))] + [(b, parse_budget(b)) for b in args.budgets]
    timed_sweep(lm, sentences[:1], budgets[0][1], 1)  # warm-up (kernels, allocator)
    runs = []
    frame = None
    for label, budget in budgets:
        with PeakMemory(lm.device) as mem:
            median, times, frame = timed_sweep(lm, sentences, budget, args.repeats)
        runs.append({"budget": label, "rows": budget.rows, "tokens": budget.tokens, "bytes": budget.bytes,
                     "seconds": median, "runs": times, "patches_per_s": patches / median,
                     "over_floor": median / floor, "peak_mib": mem.mib})
        print(f"  engine, budget {label:>14}: {median:8.3f} s  {patches / median:10,.0f} patches/s  "
              f"{median / floor:6.1f}x the floor  peak +{mem.mib:,.0f} MiB  "
              f"(runs: {', '.join(f'{t:.3f}' for t in times)} s)")
    report["engine"] = runs
    if lm.device.type == "cuda":  # the engine runs' peak (the weights included)
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated(lm.device) / 2**30

    # The plain hooked loop on a fraction of the patches, and the answers compared.
    keys = sorted((s, layer, pos) for s, n in enumerate(source_tokens) for layer in range(lm.num_layers)
                  for pos in range(n))
    wanted = set(random.Random(0).sample(keys, max(1, int(len(keys) * args.naive_fraction))))
    sync(lm.device)
    start = time.perf_counter()
    naive = naive_loop(lm, sentences, wanted)
    sync(lm.device)
    naive_s = (time.perf_counter() - start) * len(keys) / len(wanted)
    index = {s: i for i, s in enumerate(sentences)}
    ours = {(index[r.source_prompt], r.source_layer, r.source_position): r.top_token_ids[0]
            for r in frame.itertuples()}
    agree = sum(ours[k] == v for k, v in naive.items())
    best = min(r["seconds"] for r in runs)
    report["naive"] = {"seconds": naive_s, "timed_patches": len(wanted), "agree": agree, "compared": len(naive),
                       "speedup": naive_s / best}
    print(f"  hooked loop: {naive_s:8.2f} s (timed on {len(wanted):,} patches, extrapolated); the engine is "
          f"{naive_s / best:,.0f}x faster; top-1 equal on {agree}/{len(naive)}")
    if not args.skip_long_prefix:
        long_prefix_case(lm, sentences, source_tokens, target_tokens, budgets[0], runs[0], flops, keys, args, report)
    if args.compile:
        context = report.get("long_prefix", {}).get("target_tokens", target_tokens)
        try:
            report["decode_step"] = decode_step_timing(lm, args.compile_rows, context, args.repeats)
        except Exception as err:  # a transformers whose static cache this step does not drive
            report["decode_step"] = {"note": f"n/a ({type(err).__name__}: {str(err).splitlines()[0][:200]})"}
            print(f"  decode step: {report['decode_step']['note']}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if lm.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            timed_sweep(lm, sentences, budgets[0][1], 1)
        Path(args.profile).write_text(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40))
        print(f"  profile of one run: {args.profile}")
    return report


def long_prefix_case(lm, sentences, source_tokens, short_tokens, budget, short_run, flops, keys, args, report):
    """The same sweep with a long few-shot identity target (its prefix shared by every row): the engine with
    the device's budget, its floor, its peak memory and a check against the hooked loop; then the short and
    the long prefix's floor ratios side by side."""
    label, budget = budget
    prompt = long_identity_prompt(lm.encode, args.prefix_tokens)
    long_tokens = len(lm.encode(prompt))
    need = sweep_flops(lm, source_tokens, long_tokens)
    floor = need / flops
    timed_sweep(lm, sentences[:1], budget, 1, prompt)  # warm-up at this length
    with PeakMemory(lm.device) as mem:
        median, times, frame = timed_sweep(lm, sentences, budget, args.repeats, prompt)
    wanted = set(random.Random(1).sample(keys, min(len(keys), args.long_check)))
    naive = naive_loop(lm, sentences, wanted, prompt) if wanted else {}
    index = {s: i for i, s in enumerate(sentences)}
    ours = {(index[r.source_prompt], r.source_layer, r.source_position): r.top_token_ids[0]
            for r in frame.itertuples()}
    agree = sum(ours[k] == v for k, v in naive.items())
    report["long_prefix"] = {"target_tokens": long_tokens, "budget": label, "sweep_flop": need, "floor_s": floor,
                             "seconds": median, "runs": times, "over_floor": median / floor, "peak_mib": mem.mib,
                             "memory": mem.kind, "agree": agree, "compared": len(naive)}
    report["floor_ratio"] = {"short": short_run["over_floor"], "long": median / floor}
    print(f"  long shared prefix ({long_tokens} tokens): top-1 equal to the hooked loop on {agree}/{len(naive)}")
    print(f"  floor ratio, short against long shared prefix (budget {label}; peak memory: {mem.kind}):")
    for name, tokens, seconds, fl, peak in (("short", short_tokens, short_run["seconds"], report["floor_s"],
                                             short_run["peak_mib"]),
                                            ("long", long_tokens, median, floor, mem.mib)):
        print(f"    {name:>5} target ({tokens:4d} tokens): engine {seconds:8.3f} s, floor {fl * 1e3:9.1f} ms -> "
              f"{seconds / fl:7.1f}x  peak +{peak:,.0f} MiB")


def decode_step_timing(lm: ps.LanguageModel, rows: int, context: int, repeats: int) -> dict:
    """One decode step (``rows`` rows, one new token each, over a static cache of ``context`` tokens), eager
    and under ``torch.compile`` (CUDA graphs on a GPU), with the compile time and when it pays."""
    import inspect

    from transformers import StaticCache

    device = lm.device
    steps = max(5, 5 * repeats)
    ids = torch.randint(3, min(lm.vocab_size, 1000), (rows, context + 1), device=device)
    cache = StaticCache(config=lm.hf.config, max_cache_len=context + 1)
    # transformers 5.2x names the cache argument ``cache`` (``past_key_values`` is deprecated); earlier, the other
    kw = "cache" if "cache" in inspect.signature(lm.hf.forward).parameters else "past_key_values"
    lm.hf(input_ids=ids[:, :context], use_cache=True, logits_to_keep=1, **{kw: cache})  # the prefill, once
    new = ids[:, context:]
    position = torch.full((rows, 1), context, device=device)

    def step(forward) -> torch.Tensor:
        # the same cache slot every time, so that each step does the same work: the static cache's write
        # position is put back before the step (in place: a compiled step reads it at a fixed address)
        for layer in cache.layers:
            if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                layer.cumulative_length.fill_(context)
        return forward(input_ids=new, position_ids=position, use_cache=True, logits_to_keep=1, **{kw: cache}).logits

    def median_ms(forward) -> float:
        times = []
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            step(forward)
            sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    reference = step(lm.hf.forward).float().clone()
    eager = median_ms(lm.hf.forward)
    out = {"rows": rows, "context": context, "eager_ms": eager}
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    try:
        compiled = torch.compile(lm.hf.forward, mode=mode)
        sync(device)
        start = time.perf_counter()
        step(compiled)
        sync(device)
        compile_s = time.perf_counter() - start
        for _ in range(2):  # CUDA graphs record on the first calls after compiling
            step(compiled)
        fast = median_ms(compiled)
        diff = float((step(compiled).float() - reference).abs().max())
    except Exception as err:  # no compiler, or a model it cannot trace
        out.update(compiled_ms=None, note=f"n/a ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
        print(f"  decode step ({rows} rows, {context}-token static cache): eager {eager:.2f} ms; "
              f"torch.compile {out['note']}")
        return out
    gain = eager - fast
    pays = f"pays after {compile_s * 1e3 / gain:,.0f} steps" if gain > 0 else "does not pay (no faster)"
    out.update(compiled_ms=fast, compile_s=compile_s, mode=mode, speedup=eager / fast, max_abs_logit_diff=diff,
               pays_after_steps=compile_s * 1e3 / gain if gain > 0 else None)
    print(f"  decode step ({rows} rows, {context}-token static cache): eager {eager:.2f} ms, torch.compile "
          f"(mode={mode}{', CUDA graphs' if device.type == 'cuda' else ''}) {fast:.2f} ms = {eager / fast:.2f}x, "
          f"compiling took {compile_s:.1f} s: {pays}; logits within {diff:.1e} of eager")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--tokenizer", choices=["smollm2", "byte"], default="smollm2")
    parser.add_argument("--sentences", type=int, default=4)
    parser.add_argument("--budgets", nargs="*", default=[], metavar="ROWSxTOKENS",
                        help="more batch budgets to time, e.g. 256x16384 (the CPU default) 4096x262144")
    parser.add_argument("--naive-fraction", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--forward-rows", type=int, default=64)
    parser.add_argument("--forward-tokens", type=int, default=128)
    parser.add_argument("--skip-long-prefix", action="store_true",
                        help="leave out the long shared prefix case")
    parser.add_argument("--prefix-tokens", type=int, default=512,
                        help="length of the long case's few-shot identity target prompt, in tokens")
    parser.add_argument("--long-check", type=int, default=16,
                        help="patches of the long case checked against the hooked loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time the decode step eager and under torch.compile (CUDA graphs on a GPU)")
    parser.add_argument("--compile-rows", type=int, default=64)
    parser.add_argument("--profile", default=None, help="write a torch.profiler table of one engine run here")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = run_benchmark(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
