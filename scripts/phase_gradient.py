"""How much gradient reaches TAPA's phase at initialisation and in trained runs.

    python scripts/phase_gradient.py [RUN ...]

Builds the ablation ladder's paper-geometry TAPA model (d_model 128, 3 layers, one head of
128, BPE vocabulary 2048) at the default init (std 0.02) and prints, per layer, the norm of
the loss gradient on the phase rows of W_q / W_k over that on the amplitude rows, on a
batch of random tokens; then the same for each RUN (and its kept checkpoints) on its
validation text.
"""

import sys
from pathlib import Path

import torch

from tapa.model import ModelConfig, TapaLM, load_pretrained
from tapa.study.diagnostics import phase_gradient_ratio, text_batch

torch.manual_seed(0)
init = TapaLM(ModelConfig(positional="tapa", vocab_size=2048, d_model=128, n_layers=3, n_heads=1, head_dim=128))
ids = torch.randint(0, 2048, (8, 129))
print("init (std 0.02), random tokens:", [round(r, 3) for r in phase_gradient_ratio(init, ids)])
for run in sys.argv[1:]:
    text = text_batch(run, 8, 129)
    for folder in [*sorted(Path(run).glob("checkpoints/step_*")), Path(run)]:
        print(folder, [round(r, 3) for r in phase_gradient_ratio(load_pretrained(folder), text)])
