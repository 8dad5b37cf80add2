"""Train a GPT-2 from scratch, or fine-tune one, on any text.

    python train.py                                  # the shipped default model's recipe, into out/
    python train.py --data notes.txt --max-steps 500
    python train.py --data 'src/**/*.py' --init gpt2 --out out-ft   # fine-tune GPT-2 (or --init DIR)
    python train.py --resume                         # continue out/ exactly where it stopped
    torchrun --nproc_per_node=4 train.py             # DistributedDataParallel, same global batch

The run directory (out/) gets the model in the Hugging Face GPT-2 format (sample.py, GPT.from_pretrained and
transformers load it), train_state.pt for --resume, log.jsonl and loss.png. Bad input: one line, exit 2;
Ctrl-C: saves, then exit 130. See docs/training.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training import lm
from training.run import ArgumentParser, cli


def build_parser() -> argparse.ArgumentParser:
    """The flags, in groups: the run (shared by every training mode), then next-token training's own.
    A second mode adds its group here and dispatches on its selecting flag in main()."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       argument_default=None)
    g = p.add_argument_group("the run")
    g.add_argument("--out", type=Path, default=Path("out"), help="run directory (default out)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    g.add_argument("--overwrite", action="store_true", help="replace the model already in --out")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--num-threads", type=int, help="torch CPU threads, >= 1 (default: torch's, split among local "
                                                   "processes)")
    g.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"],
                   help="precision of the saved model files (default float32; train_state.pt stays float32)")
    g.add_argument("--seed", type=int, help="seed of the init, the data order and the samples (default 1337)")

    g = p.add_argument_group("next-token training")
    add = g.add_argument
    add("--preset", choices=sorted(lm.PRESETS), help="size and schedule preset (default: default)")
    add("--data", help="a text file, a directory of text/code files, or a quoted glob (default: the stdlib's "
                       "prose and code)")
    add("--val-fraction", type=float, help="share of files held out for validation (default 0.05)")
    add("--cache-dir", type=Path, help="where token shards are cached (default ~/.cache/pigpt/data)")
    add("--init", help="scratch, gpt2 (any hub id) or a checkpoint directory (default scratch)")
    for name in ("n-layer", "n-head", "n-embd", "block-size", "batch-size", "grad-accum", "max-steps",
                 "warmup-steps", "lr-decay-steps", "eval-interval", "eval-iters", "ckpt-interval"):
        add(f"--{name}", type=int)
    for name in ("dropout", "lr", "min-lr", "weight-decay", "beta1", "beta2", "grad-clip"):
        add(f"--{name}", type=float)
    add("--tabs", action=argparse.BooleanOptionalAction,
        help="train on the 'tabs' text form: leading groups of 4 spaces become tabs (GPT-2 spends a token per "
             "space); recorded with the model, so sample.py applies it to prompts. Default: on for the stdlib "
             "corpus, off for --data")
    add("--dtype", choices=["auto", "float32", "bfloat16"], help="autocast dtype (default auto)")
    add("--compile", action="store_true", default=None, help="torch.compile the model")

    g = p.add_argument_group("samples printed at the end (drawn as sample.py draws them: same seeds, same text)")
    g.add_argument("--samples", type=int, help="how many (default 3; 0 for none)")
    g.add_argument("--sample-tokens", type=int, help="new tokens each (default 120)")
    g.add_argument("--temperature", type=float, help="default 0.7")
    g.add_argument("--top-k", type=int, help="default 50 (0 is off)")
    g.add_argument("--top-p", type=float, help="default 1 (off)")
    g.add_argument("--prompt", help="their prompt (default: unconditional, after <|endoftext|>)")
    return p


def main(argv=None) -> dict:
    """Train as the command line `argv` says; returns a summary (final step, val loss, tokens/s, samples...).
    Bad input raises TrainError / DataError / CheckpointError (ValueErrors with a message)."""
    args = build_parser().parse_args(argv)
    return lm.main(args)


if __name__ == "__main__":
    cli(main)
