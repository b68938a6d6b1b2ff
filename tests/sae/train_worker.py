"""A training run in its own process, for the kill-and-resume and torchrun tests (not a test module).

usage: python train_worker.py DATA.pt OUT_DIR [--pause-at STEP]; under torchrun it joins a gloo group.
"""

import argparse
import os
import time
from pathlib import Path

import torch

from sae.activations import TensorBatches
from sae.models import TopKConfig
from sae.train import TrainConfig, train_sae

SAE = TopKConfig(d_in=32, d_sae=256, k=4)
TRAIN = TrainConfig(
    steps=40, batch_size=64, lr=3e-3, warmup_steps=5, checkpoint_every=10, log_every=1, dead_after_tokens=192
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--pause-at", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")

    def on_step(step, row):
        if step == args.pause_at:
            (Path(args.out) / "paused").write_text(str(step))
            time.sleep(600)  # the test kills us here

    train_sae(
        SAE,
        TensorBatches(torch.load(args.data), TRAIN.batch_size, seed=0),
        TRAIN,
        args.out,
        progress=False,
        on_step=on_step,
    )
    if "RANK" in os.environ:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
