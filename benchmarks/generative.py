"""Generative decoders on this machine: a 2-layer Llama-style model (vocabulary 512, hidden 128, grouped-query
attention: 4 heads over 2 KV heads) and a 2-layer GPT-2, from transformers configs with random weights; prompts of
32 tokens, 32 new tokens, batches of 1 and 4.

1. The gate (`deploycheck.generation.gate.gate_decoder`): greedy match and cache consistency per format, and the
   weight-only formats' KL divergence, top-1 agreement and size; each format's export and load seconds.
2. Speed, side by side with eager in one run: for each batch size, rounds in which every decoder generates once
   (the order rotating per round), so a busy neighbour hits all alike; medians over the rounds of TTFT, TPOT,
   inter-token latency p50/p99, decode and prefill tokens/s; the analytic KV-cache size. ONNX Runtime runs with
   the cache bound in place (IOBinding) and, once, copied to numpy and back, to show what the copies cost.

    python benchmarks/generative.py [--rounds 7] [--models llama,gpt2]

Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from deploycheck.errors import FormatUnavailable
from deploycheck.generation.decoders import Decoder, EagerDecoder
from deploycheck.generation.formats import export_decoder, load_decoder
from deploycheck.generation.gate import gate_decoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.streams import timed_rounds
from deploycheck.machine import torch_threads
from deploycheck.table import format_table

PROMPT, NEW = 32, 32
FORMATS = ("torch_export", "onnx", "openvino", "executorch", "aot_inductor", "onnx_int8_weight", "onnx_int4_weight",
           "openvino_int8_weight", "openvino_int4_weight", "torchao_int8_weight", "executorch_8da4w")


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128))
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=512, n_positions=128, n_embd=128,
                                                                n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    return {"llama": llama.eval(), "gpt2": gpt2.eval()}


def kv_cache_bytes(decoder: Decoder, prompts: np.ndarray) -> int:
    """The cache a sequence of PROMPT + NEW tokens holds: every layer's keys and values at float32."""
    _, state = decoder.prefill(prompts)
    per_position = sum(int(np.prod(t.shape)) // t.shape[2] for t in (
        [layer.keys for layer in state.layers] + [layer.values for layer in state.layers]))
    return per_position * (PROMPT + NEW) * 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default="llama,gpt2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gate_rows, speed_rows = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for name, model in models().items():
            if name not in args.models.split(","):
                continue
            prompts = torch.randint(0, 512, (4, PROMPT), generator=torch.Generator().manual_seed(1))
            spec = GenerativeSpec(name, model, prompts, new_tokens=NEW, batch_sizes=(1, 4), formats=("eager", *FORMATS))
            exported, seconds = {}, {}
            for fmt in FORMATS:
                started = time.perf_counter()
                try:
                    exported[fmt] = export_decoder(spec, fmt, Path(scratch) / name / fmt,
                                                   fp32_onnx=exported.get("onnx"))
                except FormatUnavailable as exc:
                    print(f"{name}/{fmt} skipped: {exc}", flush=True)
                    continue
                seconds[fmt] = {"export": time.perf_counter() - started}
            started = time.perf_counter()
            report = gate_decoder(dataclasses.replace(spec, formats=("eager", *exported)), Path(scratch) / name,
                                  exported=exported)
            print(report, f"\n(gate wall {time.perf_counter() - started:.0f} s)\n", flush=True)
            decoders: dict[str, Decoder] = {"eager": EagerDecoder(model, f"{name}/eager")}
            for fmt, path in exported.items():
                started = time.perf_counter()
                decoders[fmt] = load_decoder(path)
                seconds[fmt]["load"] = time.perf_counter() - started
            gate_rows += [[name, r.format, str(r.batch_size), f"{r.greedy.rows_matching:.0%}",
                           "ok" if r.consistency.passed else f"step {r.consistency.first_bad_step}",
                           f"{r.quality.mean_kl:.2e}", f"{r.quality.p99_kl:.2e}", f"{r.quality.top1_agreement:.1%}",
                           f"{r.quality.delta_p_rms:.2e}",
                           "" if r.size_bytes is None else f"{r.size_bytes / 2**20:.2f}",
                           f"{seconds[r.format]['export']:.1f}" if r.format in seconds else "",
                           f"{seconds[r.format]['load']:.2f}" if r.format in seconds else "",
                           "ok" if r.passed else "FAIL"] for r in report.rows]
            decoders["onnx (cache copied)"] = load_decoder(Path(scratch) / name / "onnx", bound=False)
            for batch in (1, 4):
                batch_prompts = prompts[:batch].numpy()
                cache = kv_cache_bytes(decoders["eager"], batch_prompts)
                with torch_threads(1):  # eager and the .pt2 programs on one thread, as every other runtime
                    runs = timed_rounds(decoders, batch_prompts, NEW, args.rounds)
                eager_tpot = float(np.median([s.tpot_s for s in runs["eager"]]))
                for fmt, streams in runs.items():
                    steps = np.concatenate([s.step_s for s in streams])
                    tpot = float(np.median([s.tpot_s for s in streams]))
                    speed_rows.append([name, fmt, str(batch),
                                       f"{np.median([s.ttft_s for s in streams]) * 1e3:.2f}",
                                       f"{np.percentile([s.ttft_s for s in streams], 90) * 1e3:.2f}",
                                       f"{tpot * 1e3:.3f}", f"{np.percentile(steps, 50) * 1e3:.3f}",
                                       f"{np.percentile(steps, 99) * 1e3:.3f}",
                                       f"{np.median([s.decode_tokens_per_s() for s in streams]):.0f}",
                                       f"{np.median([s.prefill_tokens_per_s(PROMPT) for s in streams]):.0f}",
                                       f"{eager_tpot / tpot:.2f}x", f"{cache / 1024:.0f} KiB"])
                print(f"{name} batch {batch}: timed", flush=True)
    print(format_table(["model", "format", "batch", "greedy match", "cache", "mean KL", "p99 KL", "top-1",
                        "delta-p RMS", "MiB", "export s", "load s", "status"], gate_rows))
    print()
    print(format_table(["model", "format", "batch", "TTFT ms", "TTFT p90", "TPOT ms", "ITL p50", "ITL p99",
                        "decode tok/s", "prefill tok/s", "TPOT vs eager", "KV cache"], speed_rows))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; {args.rounds} rounds "
          "per batch size, one thread per runtime")


if __name__ == "__main__":
    main()
