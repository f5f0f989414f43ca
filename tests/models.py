"""Small models the tests build on: two inputs and two outputs, and a model whose export fails."""

from __future__ import annotations

import torch
from torch import nn

import deploycheck


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
