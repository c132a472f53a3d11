"""``xception-demo synthetic`` (the generated dataset), ``train`` (an Xception on it; the bundled
model by default) and ``ablate`` (the paper's ablations with identical budgets)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _widths(n: int):
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated integers, got {text!r}") from None
        if len(values) != n or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated positive integers, got {text!r}")
        return values

    return parse


def _train_config(args: argparse.Namespace):
    from xception_core.train import TrainConfig

    fields = {
        "stem_channels": args.stem,
        "entry_channels": args.entry,
        "middle_repeats": args.middle_repeats,
        "exit_channels": args.exit,
        "intermediate_activation": args.activation,
        "residual": not args.no_residual,
        "input_size": args.input_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "data_seed": args.data_seed,
        "val_seed": args.val_seed,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "threads": args.threads,
    }
    return TrainConfig(**{k: v for k, v in fields.items() if v is not None})


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("architecture and budget (defaults: the bundled model's)")
    g.add_argument("--stem", type=_widths(2), help="stem widths, e.g. 12,24")
    g.add_argument("--entry", type=_widths(3), help="entry block widths, e.g. 32,64,128")
    g.add_argument("--middle-repeats", type=int)
    g.add_argument("--exit", type=_widths(3), help="exit widths, e.g. 160,192,256")
    g.add_argument("--activation", choices=("none", "relu", "elu"), help="between depthwise and pointwise")
    g.add_argument("--no-residual", action="store_true")
    g.add_argument("--input-size", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--train-size", type=int)
    g.add_argument("--val-size", type=int)
    g.add_argument("--data-seed", type=int)
    g.add_argument("--val-seed", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--eval-every", type=int, help="steps between validations (0: each epoch)")
    g.add_argument("--threads", type=int)


def cmd_synthetic(args: argparse.Namespace) -> int:
    from xception_core import synthetic

    out = synthetic.write_folder(args.out, args.n, args.seed, args.size)
    print(f"wrote {args.n} images of {synthetic.NUM_CLASSES} classes ({args.size} px, seed {args.seed}) to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from xception_core.train import save, train

    result = train(_train_config(args), progress=not args.quiet)
    card = save(result, args.out, args.name)
    print(
        f"validation top-1 {result.val_top1:.2%} after {result.seconds / 60:.1f} min; "
        f"wrote {card.weights_path} (sha256 {card.sha256[:12]}...) and its card"
    )
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from xception_core.train import ablate

    csv_path = ablate(_train_config(args), args.out, variants=args.variants, progress=not args.quiet)
    summary = json.loads((Path(args.out) / "ablation.json").read_text())["variants"]
    for name, s in summary.items():
        print(f"{name:20} val top-1 {s['val_top1']:.2%}  ({s['seconds']:.0f} s)")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.png')}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("synthetic", help="write generated pattern x colour images, one folder per class")
    p.add_argument("--out", required=True, help="output folder (class sub-folders + masks.npz)")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.set_defaults(func=cmd_synthetic)

    p = commands.add_parser("train", help="train an Xception on generated data (the bundled model by default)")
    p.add_argument("--out", required=True, help="output folder for <name>.safetensors and <name>.json")
    p.add_argument("--name", default="xception-mini-synthetic", help="model id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_training_options(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("ablate", help="the paper's ablations with identical budgets: CSV + plot")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--variants", nargs="+", metavar="VARIANT",
        help="which variants to train (default: all of the paper's; an unknown name is refused with the list)",
    )
    p.add_argument("--quiet", action="store_true")
    _add_training_options(p)
    p.set_defaults(func=cmd_ablate)
