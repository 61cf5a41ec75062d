"""Benchmark of issue 3: whole sweeps as batch rows versus one forward per patch.

Prints, measured side by side in one run on the same machine:

- Workload A, token identity: SmolLM2-135M, English sentences of ~25 tokens, every position × every layer
  (l* = l). (a) the naive loop of the paper's code: one source forward per sentence, then one target
  forward per patch with a hook; (b) this engine; (c) nnterp's ``patchscope_lens`` where it is installed
  (``pip install nnterp 'nnsight==0.6.*'``).
- Workload B, entity description: 50 entity names × layers 0-9, 20 generated tokens. (a) the naive loop:
  one Hugging Face ``generate`` per patch, patching at prefill; (b) this engine.
- The compute limit: the model's own batched forward throughput (tokens/s), and how far the engine is from
  doing only the tokens a sweep needs.

Every speed-up is checked for equal answers: the naive loop and the engine must agree on every top-1 token
and generated text. Usage::

    python benchmarks/bench_sweeps.py [--model smollm2-135m] [--sentences 4] [--entities 50]
        [--naive-fraction 1.0] [--repeats 3] [--skip-nnterp] [--json out.json]

``--naive-fraction`` times the naive loop on a fraction of the patches and extrapolates (said in the output).
The engine, a few seconds per workload, is timed ``--repeats`` times and its median is used; the naive loop
and nnterp, minutes long, once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

import torch

import patchscopes as ps
from patchscopes.engine.hooks import hooks_on, patch_hook

SENTENCES = [
    "The Eiffel Tower, completed in 1889 for the World's Fair, still draws millions of visitors to Paris every year.",
    "After the long winter, the farmers in the valley planted wheat, barley and potatoes in their small fields.",
    "Marie Curie was the first person to win two Nobel Prizes, one in physics and one in chemistry.",
    "The old library on the hill keeps thousands of rare books, maps and letters from the seventeenth century.",
    "Whales communicate with complex songs that can travel hundreds of kilometres through the deep ocean water.",
    "In 1969 two astronauts walked on the Moon while a third orbited above them in the command module.",
    "Good bread needs only flour, water, salt and yeast, but it also needs patience and a very hot oven.",
    "The river flooded the town twice that decade, so the council finally built a tall stone wall along it.",
]

ENTITIES = [
    "Paris", "Barack Obama", "Albert Einstein", "Microsoft", "the Amazon River", "Tokyo", "William Shakespeare",
    "Mount Everest", "the Beatles", "Leonardo da Vinci", "Google", "Australia", "Isaac Newton", "the Moon",
    "Coca-Cola", "Napoleon", "the Pacific Ocean", "Toyota", "Charles Darwin", "Egypt", "Mozart", "London",
    "the Sahara", "Apple Inc.", "Abraham Lincoln", "Brazil", "Harry Potter", "the Nile", "Marie Curie",
    "New York City", "Nelson Mandela", "the Roman Empire", "Pablo Picasso", "Canada", "Facebook", "Beethoven",
    "Queen Elizabeth II", "Germany", "the Great Wall of China", "Elvis Presley", "Mars", "Netflix", "India",
    "Galileo Galilei", "the Titanic", "Michael Jordan", "Rome", "Amazon", "Winston Churchill", "Japan",
]


class PeakRSS:
    """Samples the process's resident memory in a thread and reports the peak above the start (MiB)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def naive_token_identity(lm, sentences, patches_wanted):
    """The paper's loop: per sentence one source forward; per (layer, position) one target forward."""
    target_ids = torch.tensor([lm.encode(ps.TOKEN_IDENTITY_PROMPT)])
    last = target_ids.shape[1] - 1
    answers = {}
    for s_idx, sentence in enumerate(sentences):
        ids = torch.tensor([lm.encode(sentence)])
        # one forward reading every block's output (before the final norm)
        outs = {}
        hooks = {}
        for layer in range(lm.num_layers):
            def grab(module, args, output, layer=layer, outs=outs):
                outs[layer] = (output[0] if isinstance(output, tuple) else output)[0].clone()
            hooks[layer] = grab
        with hooks_on(lm.arch.blocks, hooks):
            lm.forward(ids, attention_mask=torch.ones_like(ids))
        for layer in range(lm.num_layers):
            for pos in range(ids.shape[1]):
                if (s_idx, layer, pos) not in patches_wanted:
                    continue
                hook = patch_hook(torch.tensor([0]), torch.tensor([last]), outs[layer][pos][None])
                with hooks_on(lm.arch.blocks, {layer: hook}):
                    logits, _ = lm.forward(target_ids, attention_mask=torch.ones_like(target_ids))
                answers[(s_idx, layer, pos)] = int(logits[0, -1].argmax())
    return answers


def naive_description(lm, entities, layers, max_new_tokens, patches_wanted):
    """One source forward per entity, one Hugging Face generate per (entity, layer), patched at prefill."""
    from transformers import GenerationConfig

    target = lm.encode(ps.ENTITY_DESCRIPTION_PROMPT)
    target_ids = torch.tensor([target])
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=lm.pad_token_id,
                              eos_token_id=sorted(lm.eos_token_ids))
    answers = {}
    for e_idx, entity in enumerate(entities):
        ids = torch.tensor([lm.encode(entity)])
        outs = {}
        hooks = {}
        for layer in layers:
            def grab(module, args, output, layer=layer, outs=outs):
                outs[layer] = (output[0] if isinstance(output, tuple) else output)[0, -1].clone()
            hooks[layer] = grab
        with hooks_on(lm.arch.blocks, hooks):
            lm.forward(ids, attention_mask=torch.ones_like(ids))
        for layer in layers:
            if (e_idx, layer) not in patches_wanted:
                continue
            hook = patch_hook(torch.tensor([0]), torch.tensor([len(target) - 1]), outs[layer][None], once=True)
            with hooks_on(lm.arch.blocks, {layer: hook}):
                out = lm.hf.generate(input_ids=target_ids, attention_mask=torch.ones_like(target_ids),
                                     generation_config=config)
            answers[(e_idx, layer)] = out[0, len(target):].tolist()
    return answers


def forward_throughput(lm, rows=64, tokens=32, repeats=3) -> float:
    """Tokens per second of the model's own batched forward (random tokens, full logits)."""
    ids = torch.randint(100, 1000, (rows, tokens))
    mask = torch.ones_like(ids)
    lm.forward(ids[:8], attention_mask=mask[:8])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        lm.forward(ids, attention_mask=mask)
        best = min(best, time.perf_counter() - start)
    return rows * tokens / best


def timed(fn, repeats: int):
    """The median wall time of ``repeats`` calls of ``fn``, every time, and the last result."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def _runs(times) -> str:
    return ", ".join(f"{t:.2f}" for t in times) + " s"


def sample(keys, fraction, seed=0):
    import random

    keys = sorted(keys)
    if fraction >= 1.0:
        return set(keys)
    rng = random.Random(seed)
    return set(rng.sample(keys, max(1, int(len(keys) * fraction))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sentences", type=int, default=4)
    parser.add_argument("--entities", type=int, default=50)
    parser.add_argument("--naive-fraction", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="engine runs per workload (the median is used)")
    parser.add_argument("--skip-nnterp", action="store_true")
    parser.add_argument("--skip-description", action="store_true")
    parser.add_argument("--skip-token-identity", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    lm = ps.load_model(args.model, device=args.device)
    sentences = SENTENCES[: args.sentences]
    report: dict = {"model": lm.name, "machine": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "device": str(lm.device)}
    print(f"model {lm.name}, {lm.num_layers} layers, device {lm.device}, torch threads {torch.get_num_threads()}")

    # ---- compute limit ---------------------------------------------------------------------------------
    tps = forward_throughput(lm)
    print(f"model's own batched forward: {tps:,.0f} tokens/s (64 rows x 32 tokens)")
    report["forward_tokens_per_s"] = tps

    # ---- workload A ------------------------------------------------------------------------------------
    if not args.skip_token_identity:
        workload_a(lm, sentences, args, report, tps)
    if not args.skip_description:
        workload_b(lm, args, report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


def workload_a(lm, sentences, args, report, tps) -> None:
    """Token identity: every position x every layer, l* = l."""
    n_tokens = [len(lm.encode(s)) for s in sentences]
    keys = {(s, layer, pos) for s, n in enumerate(n_tokens) for layer in range(lm.num_layers) for pos in range(n)}
    n_patches = len(keys)
    print(f"\nWorkload A: token identity, {len(sentences)} sentences ({sum(n_tokens)} tokens), "
          f"every position x {lm.num_layers} layers = {n_patches} patches")
    with PeakRSS() as mem_b:
        t_engine, times, frame = timed(
            lambda: ps.sweep(lm, sentences, "token-identity", layers="all", positions="all", top_k=1), args.repeats)
    wanted = sample(keys, args.naive_fraction)
    with PeakRSS() as mem_a:
        start = time.perf_counter()
        naive = naive_token_identity(lm, sentences, wanted)
        t_naive = (time.perf_counter() - start) * n_patches / len(wanted)
    prompt_index = {s: i for i, s in enumerate(sentences)}
    engine_ans = {(prompt_index[r.source_prompt], r.source_layer, r.source_position): r.top_token_ids[0]
                  for r in frame.itertuples()}
    agree = sum(engine_ans[k] == v for k, v in naive.items())
    print(f"  (a) naive loop     {t_naive:8.2f} s  {n_patches / t_naive:9.1f} patches/s  peak +{mem_a.mib:6.0f} MiB"
          + ("" if args.naive_fraction >= 1 else f"  (timed on {len(wanted)} patches, extrapolated)"))
    print(f"  (b) this engine    {t_engine:8.2f} s  {n_patches / t_engine:9.1f} patches/s  peak +{mem_b.mib:6.0f} MiB"
          f"  (median of {_runs(times)})")
    print(f"      top-1 agreement with the naive loop: {agree}/{len(naive)}")
    report["A"] = {"patches": n_patches, "naive_s": t_naive, "engine_s": t_engine, "engine_runs_s": times,
                   "agree": agree, "compared": len(naive), "engine_peak_mib": mem_b.mib, "naive_peak_mib": mem_a.mib}
    ratio_a = t_naive / t_engine
    print(f"      speed-up over naive: {ratio_a:.1f}x (goal >= 50x)")
    t_nnterp = None
    if not args.skip_nnterp:
        try:
            from nnterp import StandardizedTransformer
            from nnterp.interventions import TargetPrompt, patchscope_lens
        except Exception as err:  # not installed or incompatible
            print(f"  (c) nnterp: not available ({type(err).__name__}: {err}); skipped")
        else:
            nn_model = StandardizedTransformer(str(lm.hf.config._name_or_path) if os.path.isdir(
                str(lm.hf.config._name_or_path)) else lm.hf.name_or_path)
            prefixes = []
            for s in sentences:
                ids = lm.encode(s)
                prefixes += [lm.tokenizer.decode(ids[: p + 1]) for p in range(len(ids))]
            target = TargetPrompt(ps.TOKEN_IDENTITY_PROMPT, -1)
            with PeakRSS() as mem_c:
                start = time.perf_counter()
                probs = patchscope_lens(nn_model, source_prompts=prefixes, target_patch_prompts=target)
                t_nnterp = time.perf_counter() - start
            # nnterp re-tokenizes each prefix; count where its argmax equals ours
            flat = [engine_ans[(s, layer, p)] for s, n in enumerate(n_tokens) for p in range(n)
                    for layer in range(lm.num_layers)]
            theirs = probs.argmax(-1).reshape(-1).tolist()  # (sources, layers) in source-major order
            same = sum(a == b for a, b in zip(flat, theirs))
            print(f"  (c) nnterp         {t_nnterp:8.2f} s  {n_patches / t_nnterp:9.1f} patches/s  peak "
                  f"+{mem_c.mib:6.0f} MiB")
            print(f"      top-1 agreement with nnterp: {same}/{len(flat)}; speed-up over nnterp: "
                  f"{t_nnterp / t_engine:.1f}x (goal >= 10x)")
            report["A"].update(nnterp_s=t_nnterp, nnterp_agree=same)
    needed = sum(n_tokens) + n_patches + len(lm.encode(ps.TOKEN_IDENTITY_PROMPT))
    t_limit = needed / tps
    print(f"  compute limit: the sweep needs {needed} token-forwards -> {t_limit:.2f} s at the model's "
          f"throughput; the engine takes {t_engine / t_limit:.2f}x that (goal <= 2x)")
    # A finer floor: a row patched at l* needs only blocks l*+1..L-1 and the unembedding of one token.
    # Weights per block and of the unembedding stand for multiply-adds per token (attention over ~15
    # cached tokens is negligible at this size).
    block = sum(p.numel() for p in lm.arch.blocks[0].parameters())
    head = lm.arch.unembed.weight.numel()
    per_token = lm.num_layers * block + head
    work = sum(n_tokens) + len(lm.encode(ps.TOKEN_IDENTITY_PROMPT)) + sum(
        ((lm.num_layers - 1 - layer) * block + head) / per_token
        for layer in range(lm.num_layers) for _ in range(sum(n_tokens)))
    t_work = work / tps
    print(f"  work floor: skipping the blocks below l*, that is {work:,.0f} token-forwards of arithmetic -> "
          f"{t_work:.2f} s; the engine takes {t_engine / t_work:.2f}x that")
    report["A"].update(needed_tokens=needed, limit_s=t_limit, work_tokens=work, work_s=t_work)


def workload_b(lm, args, report) -> None:
    """Entity description: entities x layers 0-9, 20 generated tokens."""
    entities = ENTITIES[: args.entities]
    layers = list(range(min(10, lm.num_layers)))
    keys_b = {(e, layer) for e in range(len(entities)) for layer in layers}
    print(f"\nWorkload B: entity description, {len(entities)} entities x layers 0-{layers[-1]}, "
          f"20 new tokens = {len(keys_b)} generations")
    with PeakRSS() as mem_b2:
        t_engine_b, times_b, frame_b = timed(
            lambda: ps.sweep(lm, entities, "description", layers=layers, positions=-1, max_new_tokens=20,
                             readout=ps.Generate(max_new_tokens=20)), args.repeats)
    wanted_b = sample(keys_b, args.naive_fraction)
    with PeakRSS() as mem_a2:
        start = time.perf_counter()
        naive_b = naive_description(lm, entities, layers, 20, wanted_b)
        t_naive_b = (time.perf_counter() - start) * len(keys_b) / len(wanted_b)
    e_index = {e: i for i, e in enumerate(entities)}
    ours = {(e_index[r.source_prompt], r.source_layer): r.generated_text for r in frame_b.itertuples()}
    agree_b = sum(ours[k] == lm.decode([t for t in v if t not in lm.eos_token_ids]) for k, v in naive_b.items())
    print(f"  (a) naive loop     {t_naive_b:8.2f} s  {len(keys_b) / t_naive_b:9.2f} patches/s  peak "
          f"+{mem_a2.mib:6.0f} MiB" + ("" if args.naive_fraction >= 1 else "  (extrapolated)"))
    print(f"  (b) this engine    {t_engine_b:8.2f} s  {len(keys_b) / t_engine_b:9.2f} patches/s  peak "
          f"+{mem_b2.mib:6.0f} MiB  (median of {_runs(times_b)})")
    print(f"      generated text identical to the naive loop: {agree_b}/{len(naive_b)}")
    print(f"      speed-up over naive: {t_naive_b / t_engine_b:.1f}x (goal >= 10x)")
    report["B"] = {"patches": len(keys_b), "naive_s": t_naive_b, "engine_s": t_engine_b,
                   "engine_runs_s": times_b, "agree": agree_b, "compared": len(naive_b)}


if __name__ == "__main__":
    main()
