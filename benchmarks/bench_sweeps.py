"""Benchmark of issue 3: whole sweeps as batch rows versus one forward per patch.

Prints, measured side by side in one run on the same machine:

- Workload A, token identity: SmolLM2-135M, English sentences of ~25 tokens, every position × every layer
  (l* = l). (a) the naive loop of the paper's code: one source forward per sentence, then one target
  forward per patch with a hook; (b) this engine; (c) nnterp's ``patchscope_lens`` where it is installed
  (``pip install nnterp 'nnsight==0.6.*'``).
- Workload B, entity description: 50 entity names × layers 0-9, 20 generated tokens. (a) the naive loop:
  one Hugging Face ``generate`` per patch, patching at prefill; (b) this engine.
- Workload C, a long shared prefix (issue 20): token identity with a ~512-token few-shot identity target
  prompt (``word -> word`` lines ending in ``?``, patched at its last token), against the same sweep with the
  short prompt. Every row shares the target's tokens before i* (the prefix); the floor is the arithmetic the
  sweep needs with the prefix counted once: the prefix through every block, each row through the blocks
  above its l* (and one unembedding), and the source prompts once, in token-layers at the model's measured
  token-layer throughput. Printed with the engine's time, the ratio and the engine's peak memory, and a
  one-line ``LONG-PREFIX SUMMARY`` to compare runs of different versions of the engine; a few patches are
  checked against ``engine="reference"`` (top-1 identical).
- The compute limit: the model's own batched forward throughput (tokens/s), and how far the engine is from
  doing only the tokens a sweep needs.

Every speed-up is checked for equal answers: the naive loop and the engine must agree on every top-1 token
and generated text. Usage::

    python benchmarks/bench_sweeps.py [--model smollm2-135m] [--sentences 4] [--entities 50]
        [--naive-fraction 1.0] [--repeats 3] [--skip-nnterp] [--json out.json]
    python benchmarks/bench_sweeps.py --long-prefix [--prefix-tokens 512] [--long-prefix-sentences 1]
        [--check-patches 4] [--json out.json]   # workload C alone (about 2 minutes, one thread)

``--naive-fraction`` times the naive loop on a fraction of the patches and extrapolates (said in the output).
The engine, a few seconds per workload, is timed ``--repeats`` times and its median is used; the naive loop
and nnterp, minutes long, once. ``--long-prefix`` runs workload C alone; ``--skip-long-prefix`` leaves it out.
The script imports only what the library had before issue 20, so it can time an older checkout too
(``PYTHONPATH=/path/to/old/src python bench_sweeps.py --long-prefix``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import torch

import patchscopes as ps

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


# Words and numbers for the long few-shot identity prompt (workload C); numbers come from a seeded generator.
IDENTITY_WORDS = [
    "dog", "house", "river", "green", "apple", "window", "music", "table", "garden", "yellow", "bread",
    "mountain", "friend", "winter", "paper", "clock", "ocean", "stone", "car", "light", "forest", "coffee",
    "silver", "train", "book", "chair", "cloud", "horse", "lamp", "orange", "piano", "rain", "school",
    "summer", "tiger", "water", "bridge", "candle", "desert", "engine",
]


def long_identity_prompt(encode, tokens: int = 512) -> str:
    """A few-shot token-identity prompt of at most ``tokens`` tokens (as ``encode`` counts them, and as close
    to it as the lines allow): ``ps.TOKEN_IDENTITY_PROMPT``'s lines, then ``word -> word`` lines of words
    and numbers, ending in ``?``, the position a token-identity patch writes to."""
    lines = ps.TOKEN_IDENTITY_PROMPT.split("\n")[:-1]
    rng = random.Random(0)
    misses, i = 0, 0
    while misses < 8:
        word = str(rng.randint(10, 9999)) if i % 3 == 0 else IDENTITY_WORDS[i % len(IDENTITY_WORDS)]
        i += 1
        if len(encode("\n".join([*lines, f"{word} -> {word}", "?"]))) > tokens:
            misses += 1  # too long: try shorter lines until several in a row do not fit
            continue
        lines.append(f"{word} -> {word}")
        misses = 0
    return "\n".join([*lines, "?"])


def code_version() -> str:
    """Where ``patchscopes`` was imported from, with the commit of its checkout (``+dirty`` if its src/ has
    uncommitted changes), so runs of different versions can be told apart."""
    where = os.path.dirname(os.path.dirname(os.path.abspath(ps.__file__)))
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.strip()
        return f"{where} @ {head}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return where


@contextmanager
def hooks_on(blocks, hooks):
    """Register ``hooks[layer]`` as a forward hook on ``blocks[layer]`` for the duration of the block.

    The naive loops' own plain PyTorch hooks (the paper's code), independent of the engine's internals, so
    that the same script times the engine before and after it changes."""
    handles = [blocks[layer].register_forward_hook(fn) for layer, fn in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def patch_hook(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, *, once: bool = False):
    """A forward hook writing ``values`` (one vector per row) over a block's output at ``[rows, cols]``;
    with ``once``, only on the first call (the prefill of a generation)."""
    state = {"done": False}

    def hook(module, args, output):
        if once and state["done"]:
            return output
        state["done"] = True
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[rows.to(hidden.device), cols.to(hidden.device)] = values.to(hidden.device, hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


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


class PeakMemory(PeakRSS):
    """The peak above the start (MiB) of torch's allocator on a GPU, else of the process's resident memory."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.kind = "GPU allocator" if device.type == "cuda" else "RSS"

    def __enter__(self):
        if self.device.type != "cuda":
            return super().__enter__()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type != "cuda":
            return super().__exit__(*exc)
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)


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


def token_layer_throughput(lm, rows=32, tokens=32, repeats=2) -> float:
    """Token-layers per second (one token through one block) of the model's own batched forward, stopped
    before the unembedding's full logits (the last position's only): rows x tokens x layers / seconds."""
    ids = torch.randint(100, 1000, (rows, tokens), device=lm.device)
    mask = torch.ones_like(ids)
    lm.forward(ids[:4], attention_mask=mask[:4], logits_to_keep=1)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
        start = time.perf_counter()
        lm.forward(ids, attention_mask=mask, logits_to_keep=1)
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
        best = min(best, time.perf_counter() - start)
    return rows * tokens * lm.num_layers / best


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
    parser.add_argument("--long-prefix", action="store_true",
                        help="run only workload C, the long shared prefix (issue 20)")
    parser.add_argument("--skip-long-prefix", action="store_true")
    parser.add_argument("--prefix-tokens", type=int, default=512,
                        help="length of workload C's few-shot identity target prompt, in tokens")
    parser.add_argument("--long-prefix-sentences", type=int, default=1,
                        help="source sentences of workload C (every position x every layer)")
    parser.add_argument("--check-patches", type=int, default=4,
                        help="patches of workload C (and of its short-prompt run) checked against engine='reference'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    lm = ps.load_model(args.model, device=args.device)
    sentences = SENTENCES[: args.sentences]
    report: dict = {"model": lm.name, "machine": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "device": str(lm.device),
                    "torch": torch.__version__, "load_average_at_start": os.getloadavg(),
                    "command": " ".join(["python", *sys.argv])}
    print(f"model {lm.name}, {lm.num_layers} layers, device {lm.device}, torch threads {torch.get_num_threads()}")

    if args.long_prefix:
        args.skip_token_identity = args.skip_description = True

    # ---- compute limit ---------------------------------------------------------------------------------
    if not args.skip_token_identity:
        tps = forward_throughput(lm)
        print(f"model's own batched forward: {tps:,.0f} tokens/s (64 rows x 32 tokens)")
        report["forward_tokens_per_s"] = tps

    # ---- workloads -------------------------------------------------------------------------------------
    if not args.skip_token_identity:
        workload_a(lm, sentences, args, report, tps)
    if not args.skip_description:
        workload_b(lm, args, report)
    if not args.skip_long_prefix:
        workload_c(lm, args, report)
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


def identity_floor(lm, source_tokens: list[int], target_tokens: int) -> dict:
    """The token-layers (one token through one block) a token-identity sweep over every position x every
    layer (l* = l, i* the target's last token) needs, with the target prefix counted once.

    - prefix: the target's tokens before i* through every block, once for all rows;
    - sources: each source token through every block, once;
    - rows: each patch's own token (i*) through the blocks above its l*, plus one unembedding, counted as
      (unembedding weights / block weights) token-layers;
    - attention: what the token-layers leave out, attention's multiply-adds over the context (the prefix's
      causal self-attention, and each row's query over the prefix and itself), in token-layers of the
      block's weights. Reported beside the floor, not in it.
    """
    layers = lm.num_layers
    block = sum(p.numel() for p in lm.arch.blocks[0].parameters())
    head = lm.arch.unembed.weight.numel() / block
    d = lm.hidden_size
    prefix = (target_tokens - 1) * layers
    sources = sum(source_tokens) * layers
    rows = sum(source_tokens) * sum((layers - 1 - layer) + head for layer in range(layers))
    # q.k and attention-weights.v: 2 x context x d multiply-adds per query and block
    attn_prefix = layers * sum(2 * (t + 1) * d for t in range(target_tokens - 1)) / block
    attn_rows = sum(source_tokens) * sum(layers - 1 - layer for layer in range(layers)) * 2 * target_tokens * d / block
    return {"prefix": prefix, "sources": sources, "rows": rows, "unembedding_per_row": head,
            "total": prefix + sources + rows, "attention": attn_prefix + attn_rows}


def _check_reference(lm, sentences, target_prompt, frame, n, seed=0):
    """Top-1 of ``n`` patches of the sweep, drawn at random, by ``engine="reference"``, against ``frame``'s."""
    if n <= 0:
        return 0, 0
    scopes = ps.plan_sweep(lm, sentences, "token-identity", layers="all", positions="all", top_k=1,
                           target_prompt=target_prompt)
    picked = random.Random(seed).sample(scopes, min(n, len(scopes)))
    ref = ps.run(picked, lm, engine="reference")
    ours = {(r.source_prompt, r.source_layer, r.source_position): r.top_token_ids[0] for r in frame.itertuples()}
    same = sum(ours[(r.source_prompt, r.source_layer, r.source_position)] == r.readings.top_token_ids[0]
               for r in ref)
    return same, len(ref)


def workload_c(lm, args, report) -> None:
    """A long shared prefix (issue 20): token identity with a ~512-token few-shot target, against the short one."""
    sentences = SENTENCES[: args.long_prefix_sentences]
    source_tokens = [len(lm.encode(s)) for s in sentences]
    long_prompt = long_identity_prompt(lm.encode, args.prefix_tokens)
    patches = sum(source_tokens) * lm.num_layers
    version = code_version()
    tlps = token_layer_throughput(lm)
    print(f"\nWorkload C: long shared prefix, token identity, {len(sentences)} sentence(s) ({sum(source_tokens)} "
          f"tokens) x every position x {lm.num_layers} layers = {patches} patches; patchscopes from {version}")
    print(f"  model's own batched forward: {tlps:,.0f} token-layers/s (32 rows x 32 tokens, last logits only)")
    out = {"code": version, "patches": patches, "sentences": len(sentences), "source_tokens": sum(source_tokens),
           "token_layers_per_s": tlps, "memory": "GPU allocator" if lm.device.type == "cuda" else "RSS"}
    for name, prompt in (("short", ps.TOKEN_IDENTITY_PROMPT), ("long", long_prompt)):
        target_tokens = len(lm.encode(prompt))
        floor = identity_floor(lm, source_tokens, target_tokens)
        ps.sweep(lm, sentences[0], "token-identity", layers=[0], positions=[0], top_k=1,
                 target_prompt=prompt)  # warm-up: the first call's one-time costs are not the sweep's
        with PeakMemory(lm.device) as mem:
            t_engine, times, frame = timed(
                lambda prompt=prompt: ps.sweep(lm, sentences, "token-identity", layers="all", positions="all",
                                               top_k=1, target_prompt=prompt), args.repeats)
        same, checked = _check_reference(lm, sentences, prompt, frame, args.check_patches)
        t_floor = floor["total"] / tlps
        t_attn = (floor["total"] + floor["attention"]) / tlps
        print(f"  {name:>5} target ({target_tokens:4d} tokens, prefix {target_tokens - 1}): engine {t_engine:7.2f} s "
              f"(median of {_runs(times)}); floor {t_floor:6.2f} s -> {t_engine / t_floor:5.2f}x the floor "
              f"({t_engine / t_attn:.2f}x with attention); peak +{mem.mib:,.0f} MiB ({mem.kind}); "
              f"top-1 = reference {same}/{checked}")
        print(f"        floor: prefix {floor['prefix']:,.0f} + sources {floor['sources']:,.0f} + rows "
              f"{floor['rows']:,.0f} = {floor['total']:,.0f} token-layers (an unembedding = "
              f"{floor['unembedding_per_row']:.1f}); attention over the context would add {floor['attention']:,.0f}")
        out[name] = {"target_tokens": target_tokens, "engine_s": t_engine, "engine_runs_s": times,
                     "floor_token_layers": floor, "floor_s": t_floor, "over_floor": t_engine / t_floor,
                     "over_floor_with_attention": t_engine / t_attn, "peak_mib": mem.mib,
                     "reference_agree": same, "reference_checked": checked}
    s, lg = out["short"], out["long"]
    summary = (f"LONG-PREFIX SUMMARY {lm.name} {lm.device} threads={torch.get_num_threads()} patches={patches} "
               f"prefix={lg['target_tokens'] - 1}: engine {lg['engine_s']:.2f} s, floor {lg['floor_s']:.2f} s, "
               f"{lg['over_floor']:.2f}x, peak +{lg['peak_mib']:.0f} MiB | short prefix={s['target_tokens'] - 1}: "
               f"engine {s['engine_s']:.2f} s, {s['over_floor']:.2f}x, peak +{s['peak_mib']:.0f} MiB | top-1 = "
               f"reference {lg['reference_agree'] + s['reference_agree']}/"
               f"{lg['reference_checked'] + s['reference_checked']} | {version}")
    print(summary)
    out["summary"] = summary
    report["C"] = out


if __name__ == "__main__":
    main()
