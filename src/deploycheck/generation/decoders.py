"""A decoder, as the generative gate runs it: `prefill` a batch of prompts, then `decode` one token per row at a
time, the cache carried in an opaque state. Eager (transformers' `DynamicCache`) is the reference; ONNX Runtime
runs the exported prefill and decode graphs, the cache handed from one step to the next either bound in place
(IOBinding: the present tensors stay ONNX Runtime's own values and are bound as the next step's past) or copied
out to numpy and fed back, to show what the copies cost."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from deploycheck.generation.cache import cache_names


class Decoder(Protocol):
    label: str

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        """Logits (batch x prompt x vocabulary) and the cache state after the prompt."""

    def decode(self, input_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """Logits (batch x 1 x vocabulary) for one new token per row (batch x 1), and the state after it."""

    def sibling(self) -> Decoder:
        """A decoder for a sequence run alongside this one's (a server interleaves sequences step by step): itself
        when the cache lives in the state handed back, a new one sharing the weights when the runtime keeps the
        cache inside (a stateful OpenVINO request)."""


class EagerDecoder:
    """The model itself with transformers' `DynamicCache` (grown in place by each call)."""

    def __init__(self, model: torch.nn.Module, label: str) -> None:
        self.model = model.eval()
        self.label = label

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids), use_cache=True)
        return out.logits.float().numpy(), out.cache

    def decode(self, input_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids), cache=state, use_cache=True)
        return out.logits.float().numpy(), out.cache

    def sibling(self) -> EagerDecoder:
        return self


class OnnxDecoder:
    """The prefill and decode graphs in two ONNX Runtime sessions; `bound`: the cache stays in ONNX Runtime's
    values between steps (IOBinding), else it is copied to numpy and back each step."""

    def __init__(self, prefill: Any, decode: Any, layers: int, label: str, bound: bool = True) -> None:
        self.sessions = {"prefill": prefill, "decode": decode}
        self.past, self.present = cache_names(layers, "past"), cache_names(layers, "present")
        self.label = label
        self.bound = bound

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        return self._run("prefill", {"input_ids": input_ids}, ())

    def decode(self, input_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self._run("decode", {"input_ids": input_ids}, state)

    def sibling(self) -> OnnxDecoder:
        return self

    def _run(self, graph: str, arrays: dict[str, np.ndarray], past: Any) -> tuple[np.ndarray, Any]:
        session = self.sessions[graph]
        if not self.bound:
            outputs = session.run(None, {**arrays, **dict(zip(self.past, past))})
            return outputs[0], outputs[1:]
        binding = session.io_binding()
        for name, array in arrays.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, value in zip(self.past, past):
            binding.bind_ortvalue_input(name, value)
        for name in ("logits", *self.present):
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), outputs[1:]
