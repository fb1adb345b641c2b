"""The training script of tests/scenes/test_teach_flow.py: a user's own `watch()` script, in its own process.

`python teach_train.py URL FOLDER` trains the digits CNN (scikit-learn's digits) slowly (a pause after each
step), joined to room "teach" on the relay at URL as run "run", and appends one line per step to
FOLDER/steps.txt: "<step> <monotonic time> <hash of conv1> <hash of conv2> <hash of fc1>" (the hashes of
each layer's weight and bias bytes, after the optimizer step). It stops when FOLDER/stop exists (or after
ten minutes).
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch
from torch import nn

from deeproom.models.training import watch
from deeproom.models.training.demo import digits
from deeproom.models.zoo import DigitsCNN


def layer_hash(layer: nn.Module) -> str:
    data = b"".join(p.detach().numpy().tobytes() for p in layer.parameters())
    return hashlib.sha1(data).hexdigest()[:16]


def main(url: str, folder: Path) -> None:
    torch.manual_seed(0)
    train, val = digits()
    model = DigitsCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run = watch(model, room="teach", server=url, optimizer=opt, train_data=(train.x, train.y),
                val_data=(val.x[:64], val.y[:64]), name="run", embed=False, data_dir=str(folder / "run-data"))
    end = time.monotonic() + 600
    i, n = 0, len(train.y)
    with (folder / "steps.txt").open("a") as out:
        while not (folder / "stop").exists() and time.monotonic() < end and not run.stopped:
            a = (i * 32) % (n - 32)
            loss = nn.functional.cross_entropy(model(train.x[a:a + 32]), train.y[a:a + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log(loss=loss)
            out.write(f"{run.step} {time.monotonic()} {layer_hash(model.conv1)} {layer_hash(model.conv2)} "
                      f"{layer_hash(model.fc1)}\n")
            out.flush()
            i += 1
            time.sleep(0.08)
    run.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
