"""``napari-softseg`` whose training steps run out of memory in torchrun rank 1 from its
second step on (a test helper: ``torchrun ... tests/_oom_rank.py train ...``)."""

import os
import sys

import torch

from napari_softseg.commands import main
from napari_softseg.engine.training import trainer

if os.environ.get("RANK") == "1":
    original, steps = trainer.Trainer._forward_backward, []

    def forward_backward(self, idx, raters):
        steps.append(1)
        if len(steps) >= 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, idx, raters)

    trainer.Trainer._forward_backward = forward_backward

sys.exit(main(sys.argv[1:]))
