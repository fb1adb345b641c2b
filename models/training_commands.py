"""Command-line part of live training: `deeproom bench training` and `deeproom train-demo`.

Light at import (argparse only); torch loads when a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from deeproom.config import Config


def register(commands: Any, bench: Any) -> None:
    b = bench.add_parser("training", help="watch overhead, freezing, streamed embedding and labeling latency")
    b.add_argument("--quick", action="store_true", help="fewer rounds (for a smoke run)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    b.set_defaults(func=cmd_bench_training)

    p = commands.add_parser("train-demo", help="train the digits CNN live into a room (steerable from the room)")
    p.add_argument("--server", help="relay URL (default: start an embedded relay and print its URL)")
    p.add_argument("--room", default="training", help="room id (default 'training')")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="digits", help="run name: panel ids start with it")
    p.add_argument("--password", help="room password, if the room has one")
    p.set_defaults(func=cmd_train_demo)

    q = commands.add_parser("label-demo", help="label digits in a 3-D VAE latent cloud, together in a room (Kath et al.)")
    q.add_argument("--server", help="relay URL (default: start an embedded relay and print its URL)")
    q.add_argument("--room", default="labeling", help="room id (default 'labeling')")
    q.add_argument("--name", default="labels", help="panel ids start with it")
    q.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: until Ctrl-C)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_label_demo)


def cmd_bench_training(args: argparse.Namespace, config: Config) -> int:
    from deeproom.bench import emit
    from deeproom.models.training.bench import run_bench

    emit(run_bench(quick=args.quick, seed=args.seed, threads=args.threads))
    return 0


def cmd_train_demo(args: argparse.Namespace, config: Config) -> int:
    import torch

    from deeproom.models.training import watch
    from deeproom.models.training.demo import DemoCNN, digits

    torch.manual_seed(args.seed)
    train, val = digits(args.seed)
    model = DemoCNN()
    opt = torch.optim.Adam(model.parameters(), args.lr)
    run = watch(model, room=args.room, server=args.server, optimizer=opt, name=args.name,
                train_data=(train.x, train.y), val_data=(val.x, val.y), password=args.password,
                data_dir=config.data_dir / "runs")
    print(f"run {args.name} streaming into room {args.room!r} at {run.url} (steer it from the room)", flush=True)
    with run:
        for epoch in range(args.epochs):
            perm = torch.randperm(len(train.y))
            for i in range(0, len(perm), 64):
                idx = perm[i : i + 64]
                loss = torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.log(loss=loss)
                if run.stopped:
                    break
            values = run.epoch_end()
            print(f"epoch {epoch}: val_acc {values.get('val_acc', float('nan')):.3f} "
                  f"time {values['epoch_time']:.2f}s", flush=True)
            if run.stopped:
                break
    return 0


def cmd_label_demo(args: argparse.Namespace, config: Config) -> int:
    import time

    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from deeproom.models.training.hosting import LabelEngine
    from deeproom.models.training.latent import LabelingLoop, LabelingSession
    from deeproom.models.training.link import RelayLink

    d = load_digits()
    x = torch.from_numpy(d.images.reshape(-1, 64).astype(np.float32) / 16.0)
    session = LabelingSession(x, torch.from_numpy(d.target), seed=args.seed)
    session.pretrain(30)
    link = RelayLink(args.server, args.room, "labeling", data_dir=config.data_dir / "label-demo")
    thumbs = (session.x.reshape(-1, 8, 8) * 255).round().to(torch.uint8).numpy()
    loop = LabelingLoop(session, link=link, name=args.name, thumbnails=thumbs)
    loop.engine = LabelEngine(loop, link)  # the cloud declares label / retrain on a selection
    loop.start()
    print(f"labeling cloud {args.name}.latent in room {args.room!r} at {link.url}; send "
          '{"cmd": "label_sphere", "center": [x, y, z], "radius": r, "label": k} as "steer" events to '
          f"{link.participant_id}", flush=True)
    try:
        end = time.monotonic() + args.seconds if args.seconds > 0 else float("inf")
        while time.monotonic() < end:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
        link.close()
    print(f"labelled {session.n_labelled}; held-out accuracy {session.heldout_accuracy():.3f}", flush=True)
    return 0
