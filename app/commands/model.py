"""``convnd model ID -o model.npz``: download a training job's model (parameters + spec)."""
from __future__ import annotations

from app.client import Client
from app.commands.common import add_connection_args, reporting


def register(sub) -> None:
    p = sub.add_parser("model", help="download a training job's model as .npz")
    p.add_argument("id", help="the training job's id")
    p.add_argument("-o", "--output", default=None, help="file to write (default model-ID.npz)")
    add_connection_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    path = args.output or f"model-{args.id}.npz"
    with reporting("model", args.url), Client(args.url, args.api_key) as client:
        n = client.save_model(args.id, path)
    print(f"wrote {path} ({n} bytes); load it with convcore.nn.io.load({path!r})")
    return 0
