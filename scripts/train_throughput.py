"""Seconds per training step of a preset by threads / batch / width / --compile (issue 20's throughput table).

    python scripts/train_throughput.py [--preset fashion-mnist] [--threads 1] [--batch-size 128]
        [--base-channels 16] [--compile] [--steps 30] [--data-dir DIR]

Times STEPS optimizer steps after 8 warm-up steps (compilation included in the warm-up) in this process.
Run it on an otherwise idle machine, and compare settings as ratios of runs made back to back.
"""
import argparse
import time

import torch

from models import train as T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--base-channels", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--data-dir", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # the train command's own parser and overrides, so the probe times exactly what `bench train` would run
    train_parser = argparse.ArgumentParser()
    T.add_subparser(train_parser.add_subparsers())
    argv = ["train", "--preset", a.preset, "--batch-size", str(a.batch_size), "--device", "cpu",
            "--out", "/tmp/train_throughput/w.safetensors", "--set", "prediction_type=v"]
    argv += ["--set", f"net.base_channels={a.base_channels}"] if a.base_channels else []
    argv += ["--compile"] if a.compile else []
    argv += ["--data-dir", a.data_dir] if a.data_dir else []
    run = T.run_config_from_args(train_parser.parse_args(argv))
    preset = run.preset
    schedule = T.NoiseSchedule.from_config(preset.schedule)
    images, labels = T.load_training_data(preset, run.data_dir)
    state = T.make_state(run)
    state.model.train()
    forward = torch.compile(state.model) if a.compile else state.model
    kind = T.time_input_kind(preset.architecture)
    for _ in range(8):
        T.training_step(state, run, schedule, images, labels, kind, forward).item()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = T.training_step(state, run, schedule, images, labels, kind, forward)
    loss.item()
    per_step = (time.perf_counter() - start) / a.steps
    params = sum(p.numel() for p in state.model.parameters())
    print(f"threads={a.threads} batch={a.batch_size} params={params} compile={a.compile}: "
          f"{per_step:.3f} s/step, {a.batch_size / per_step:.0f} images/s")


if __name__ == "__main__":
    from bench.errors import UserError

    try:
        main()
    except UserError as exc:  # a bad option: one line, as from `bench train`
        raise SystemExit(f"error: {exc}") from None
