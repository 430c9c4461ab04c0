"""Train a job file (default examples/digits-2d.json) with convcore.nn on the CPU; print accuracy and time.

    python3 benchmarks/train_digits_convcore.py [job.json]
The same job runs in PyTorch with benchmarks/train_digits_torch.py.
"""
import json
import pathlib
import sys
import time

from convcore import datasets, nn

JOB = pathlib.Path(__file__).resolve().parent.parent / "examples" / "digits-2d.json"


def main(path=JOB):
    job = json.loads(pathlib.Path(path).read_text())
    start = time.perf_counter()
    x, y, n_classes = datasets.load(job["dataset"])
    xt, yt, xv, yv = datasets.train_val_split(x, y, job["validation_split"], seed=job["seed"])
    model = nn.Sequential.from_spec(job["model"], x.shape[1:], seed=job["seed"])
    optimizer = nn.make_optimizer(job["optimizer"])

    def report(event):
        if event["kind"] == "epoch":
            print(f"epoch {event['epoch'] + 1:>3}  train loss {event['train_loss']:.4f}  "
                  f"val loss {event['val_loss']:.4f}  val acc {event['val_accuracy']:.4f}  "
                  f"{event['seconds']:.3f} s", flush=True)

    history = nn.fit(model, xt, yt, optimizer, job["loss"], job["epochs"], job["batch_size"], job["seed"],
                     xv, yv, callback=report)
    wall = time.perf_counter() - start
    per_epoch = sum(h["seconds"] for h in history) / len(history)
    algos = sorted({layer.op.algorithm_used for layer in model.layers if isinstance(layer, nn.ConvND)})
    print(f"convcore: val accuracy {history[-1]['val_accuracy']:.4f}  best {max(h['val_accuracy'] for h in history):.4f}  "
          f"time/epoch {per_epoch:.3f} s  wall {wall:.1f} s  (conv algorithm {algos}, train {len(xt)}, val {len(xv)})")
    return history


if __name__ == "__main__":
    main(*sys.argv[1:])
