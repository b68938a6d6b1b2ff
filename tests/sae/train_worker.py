"""A training run in its own process, for the kill-and-resume and torchrun tests (not a test module).

usage: python train_worker.py DATA.pt OUT_DIR [--pause-at STEP] [--arch NAME]; under torchrun it joins a gloo group.
--arch picks the SAE from ARCHS (the transcoder reads the data's first 20 columns and writes its last 12).
"""

import argparse
import os
import time
from pathlib import Path

import torch

from sae.activations import TensorBatches
from sae.models import GatedConfig, TopKConfig, TranscoderConfig
from sae.train import TrainConfig, train_sae

SAE = TopKConfig(d_in=32, d_sae=256, k=4)
ARCHS = {
    "topk": SAE,
    "gated": GatedConfig(d_in=32, d_sae=256, l1_coefficient=5e-3),
    "transcoder": TranscoderConfig(d_in=20, d_sae=256, d_out=12, k=4),
}
TRAIN = TrainConfig(
    steps=40, batch_size=64, lr=3e-3, warmup_steps=5, checkpoint_every=10, log_every=1, dead_after_tokens=192
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--pause-at", type=int, default=-1)
    parser.add_argument("--arch", default="topk", choices=list(ARCHS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        from interp.distributed import init_group

        init_group("gloo")

    def on_step(step, row):
        if step == args.pause_at:
            (Path(args.out) / "paused").write_text(str(step))
            time.sleep(600)  # the test kills us here

    train_sae(
        ARCHS[args.arch],
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
