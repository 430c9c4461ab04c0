"""Train a job file's network with convcore.nn in this process (no service): per-epoch metrics and
seconds, the way a training job runs it (split, check_job, build_model, fit with its options).

    python3 benchmarks/train_unet_convcore.py examples/unet-3d-segmentation.json [--threads 2]
    python3 benchmarks/train_unet_convcore.py examples/resnet-4d-field.json

For field datasets it also prints the MAE of predicting the input unchanged (the identity baseline).
Run it beside benchmarks/train_unet_torch.py (same network in PyTorch) for the time per epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job", help="a training job file, e.g. examples/unet-3d-segmentation.json")
    parser.add_argument("--threads", type=int, default=2, help="BLAS/FFT threads (the service's 2 cores)")
    parser.add_argument("--epochs", type=int, default=None, help="override the job's epochs")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np

    from convcore import datasets, nn

    job = json.load(open(args.job))
    epochs = args.epochs or job["epochs"]
    t0 = time.perf_counter()
    x, y, _ = datasets.load(job["dataset"])
    info = datasets.info(job["dataset"])
    plan = nn.check_job(job, info)
    xt, yt, xv, yv = datasets.train_val_split(x, y, job["validation_split"], seed=job["seed"])
    model = nn.build_model(job["model"], info.input_shape, seed=job["seed"])
    optimizer = nn.make_optimizer(job["optimizer"])
    n_params = sum(p.size for p in model.parameters().values())
    print(f"{args.job}: {plan['task']}, {len(xt)} train / {len(xv)} val samples of {info.input_shape}, "
          f"{n_params} parameters, data {time.perf_counter() - t0:.1f} s")
    if info.task == "regress":
        print(f"identity baseline (predict the input unchanged): val MAE {float(np.abs(xv - yv).mean()):.5f}")

    def report(event):
        if event["kind"] == "epoch":
            keys = ("train_loss", "val_loss", "val_dice", "val_iou", "val_mae", "lr", "seconds")
            print(f"epoch {event['epoch'] + 1:>2}: " + "  ".join(
                f"{k} {event[k]:.4g}" for k in keys if event.get(k) is not None)
                + (f"  per-class dice {[round(v, 3) for v in event['val_dice_per_class']]}"
                   if "val_dice_per_class" in event else ""), flush=True)

    start = time.perf_counter()
    history = nn.fit(model, xt, yt, optimizer, job["loss"], epochs, job["batch_size"], job["seed"], xv, yv,
                     callback=report, options=plan["options"])
    total = time.perf_counter() - start
    final = nn.evaluate(model, xv, yv, job["loss"])
    per_epoch = [row["seconds"] for row in history]
    print(f"{len(history)} epochs in {total:.1f} s ({np.median(per_epoch):.2f} s per epoch, median); "
          f"total with data {time.perf_counter() - t0:.1f} s")
    print("final model (best epoch kept):" if plan["options"].keep_best else "final model:",
          json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in final.items()}))


if __name__ == "__main__":
    main()
