"""Training-only linear probes on every media token a tower outputs (what the medium *is*: colour, shape, count,
position; pitch, beep count).

Why: without them the decoder sat at the answer prior for hundreds of steps: only the one or two tokens that hold
the shape carried its colour, too weak a signal for a randomly initialised decoder to find. The probes are not part
of the model and are not saved.
"""

from __future__ import annotations

import torch

from .data import PROBES


class TowerProbes(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict(
            {
                f"{kind}_{attr}": torch.nn.Linear(width, len(values))
                for kind, attrs in PROBES.items()
                for attr, values in attrs.items()
            }
        )
        self.captured = {}

    def attach(self, model):
        """Capture the towers' outputs during the model's forward (no second tower pass)."""

        def keep(name, field):
            return lambda module, args, out: self.captured.__setitem__(name, getattr(out, field))

        return [
            model.model.visual.register_forward_hook(keep("image", "pooler_output")),
            model.model.audio_tower.register_forward_hook(keep("audio", "last_hidden_state")),
        ]

    def loss(self, model, items, batch) -> torch.Tensor:
        """Every media token must predict its medium's attributes (so every token carries them: the decoder can
        read them with any attention pattern, which is what makes the task learnable in minutes)."""
        config = model.config
        token = {"image": config.image_token_id, "audio": config.audio_token_id}
        losses = []
        for kind in ("image", "audio"):
            rows = [i for i, it in enumerate(items) if it.kind == kind]
            if not rows:
                continue
            counts = (batch["input_ids"][rows] == token[kind]).sum(-1)  # tokens per medium, in order
            features = self.captured.pop(kind).float()
            for attr in PROBES[kind]:
                labels = torch.tensor([items[i].aux[attr] for i in rows]).repeat_interleave(counts)
                if (labels >= 0).any():
                    losses.append(
                        torch.nn.functional.cross_entropy(
                            self.heads[f"{kind}_{attr}"](features), labels, ignore_index=-100
                        )
                    )
        return torch.stack(losses).mean()
