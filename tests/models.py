"""Small models the tests build on: two inputs and two outputs, and a model whose export fails; and the default
formats this installation can run (the optional extras may be absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

import deploycheck
from deploycheck.formats import default_formats, get_format
from deploycheck.formats.base import installed


def corrupted_copy(artifact: Path, file_name: str, destination: Path) -> Path:
    """A copy of an artifact directory with one byte in the middle of `file_name` flipped."""
    shutil.copytree(artifact, destination)
    data = bytearray((destination / file_name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (destination / file_name).write_bytes(bytes(data))
    return destination


def installed_formats() -> list[str]:
    """The default formats whose packages are all installed (without an extra, its formats are skipped)."""
    return [name for name in default_formats() if all(installed(p) for p in get_format(name).packages)]


class TwoInTwoOut(nn.Module):
    """Image-like and vector inputs; class logits and a regression output."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(16, 24)
        self.vector = nn.Linear(6, 24)
        self.classes = nn.Linear(24, 5)
        self.value = nn.Linear(24, 2)

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.image(image.flatten(1)) + self.vector(vector))
        return self.classes(hidden), self.value(hidden)


def two_io_spec(**overrides: object) -> deploycheck.ModelSpec:
    torch.manual_seed(0)
    model = TwoInTwoOut()
    images, vectors = torch.randn(256, 1, 4, 4), torch.randn(256, 6)
    labels = model(images, vectors)[0].argmax(1)
    eval_data = [((images[i:i + 64], vectors[i:i + 64]), labels[i:i + 64]) for i in range(0, 256, 64)]
    settings: dict[str, object] = {
        "name": "two_io", "model": model, "factory": TwoInTwoOut,
        "example_inputs": (images[:8], vectors[:8]), "input_names": ["image", "vector"],
        "output_names": ["classes", "value"], "eval_data": eval_data,
    }
    settings.update(overrides)
    return deploycheck.ModelSpec(**settings)  # type: ignore[arg-type]


class OutlierMLP(nn.Module):
    """A digits MLP with one hidden unit that fires rarely but hugely (and feeds nothing): its range sets the
    per-tensor int8 scale of the hidden activations and crushes every other unit to zero under MinMax
    calibration. Built to quantize badly."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 33)
        self.out = nn.Linear(33, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def outlier_spec(**overrides: object) -> deploycheck.ModelSpec:
    from deploycheck.digits import batches, load_split, train

    x_train, y_train, x_test, y_test = load_split()
    torch.manual_seed(0)
    model = OutlierMLP()
    train(model, x_train, y_train, {"epochs": 15})
    bright = x_train.flatten(1).mean(0).argsort()[20]
    with torch.no_grad():
        model.hidden.weight[32].zero_()
        model.hidden.weight[32, bright] = 50000.0
        model.hidden.bias[32] = -45000.0
        model.out.weight[:, 32] = 0.0
    settings: dict[str, object] = {
        "name": "outlier_mlp", "model": model, "factory": OutlierMLP, "example_inputs": (x_test[:8],),
        "eval_data": batches(x_test, y_test), "max_accuracy_drop": 0.01,
        "calibration_data": [x_train[i:i + 64] for i in range(0, 512, 64)],
        "formats": ["eager", "onnx", "onnx_int8_static"],
    }
    settings.update(overrides)
    return deploycheck.ModelSpec(**settings)  # type: ignore[arg-type]


def distil_clf(vocab: int = 1000) -> nn.Module:
    """A user's own 2-layer DistilBERT classifier (random weights, built from a config): vocabulary `vocab`, 64
    positions, 3 classes."""
    import transformers

    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                           max_position_embeddings=64, num_labels=3)
    return transformers.DistilBertForSequenceClassification(config).eval()


def token_batches(count: int = 4, rows: int = 16, length: int = 12, vocab: int = 1000,
                  seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Token ids drawn Zipf-like (a few ids frequent, most rare, as text is), half the rows padded at the end."""
    generator = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, vocab)
    batches = []
    for _ in range(count):
        ids = 1 + torch.multinomial(weights, rows * length, replacement=True, generator=generator).view(rows, length)
        mask = torch.ones(rows, length, dtype=torch.long)
        mask[rows // 2:, length * 3 // 4:] = 0
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


def distil_clf_spec(**overrides: object) -> deploycheck.ModelSpec:
    """The DistilBERT classifier with keyword inputs, a dynamic sequence axis and labelled eval data (its own
    predictions)."""
    model = distil_clf()
    batches = token_batches()
    with torch.no_grad():
        labels = [model(**batch).logits.argmax(-1) for batch in batches]
    settings: dict[str, object] = {
        "name": "distil_clf", "model": model, "factory": distil_clf,
        "example_inputs": {name: tensor[:8] for name, tensor in batches[0].items()},
        "dynamic_axes": {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}},
        "eval_data": list(zip(batches, labels)), "formats": ["eager", "onnx", "onnx_int8_dynamic"],
    }
    settings.update(overrides)
    return deploycheck.ModelSpec(**settings)  # type: ignore[arg-type]


class CausalLM(nn.Module):
    """A user's own 2-layer GPT-2 language model (random weights, from a config; transformers' default SDPA
    attention, and its `Conv1D` projections): token ids in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=500, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                         bos_token_id=0, eos_token_id=0)
        self.gpt = transformers.GPT2LMHeadModel(config).eval()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gpt(input_ids=input_ids, use_cache=False).logits


def gpt2_spec(**overrides: object) -> deploycheck.ModelSpec:
    settings: dict[str, object] = {
        "name": "gpt2_tiny", "model": CausalLM().eval(), "factory": CausalLM,
        "example_inputs": {"input_ids": torch.randint(0, 500, (4, 16), generator=torch.Generator().manual_seed(2))},
        "dynamic_axes": {"input_ids": {1: "seq"}},
    }
    settings.update(overrides)
    return deploycheck.ModelSpec(**settings)  # type: ignore[arg-type]


def llama_decoder(vocab: int = 512, layers: int = 2, hidden: int = 64) -> nn.Module:
    """A Llama-style causal LM, by default of 2 layers 64 wide (all `nn.Linear`, grouped-query attention: 4 heads
    over 2 KV heads), random weights from a config."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def prompts(rows: int = 2, length: int = 8, vocab: int = 512) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(1))


def weight_bytes(model: nn.Module) -> int:
    """What `model`'s parameters take in fp32, each stored once: the size a quantized artifact is measured against."""
    return sum(parameter.numel() * 4 for parameter in model.parameters())
