"""Generative decoders, gated token by token: a causal LM's prefill and decode steps with a KV cache, exported per
format, run greedily, compared with eager on the same token stream, and timed as users feel it (TTFT, TPOT)."""
