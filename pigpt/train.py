"""Train a GPT-2 from scratch, or fine-tune one, on any text.

    python train.py                                  # the shipped default model's recipe, into out/
    python train.py --data notes.txt --max-steps 500
    python train.py --data 'src/**/*.py' --init gpt2 --out out-ft   # fine-tune GPT-2 (or --init DIR)
    python train.py --resume                         # continue out/ exactly where it stopped (GRPO runs too)
    torchrun --nproc_per_node=4 train.py             # DistributedDataParallel, same global batch
    python train.py --reward python_compiles --prompts heads.txt --out out-rl   # GRPO on pigpt/model/default

With --reward the policy (--init, default pigpt/model/default) is fine-tuned with GRPO on the prompts instead of
next-token training: rollouts drawn as sample.py draws them, rewards, TRL's loss, exactly on-policy
(docs/policy.md).

The run directory (out/) gets the model in the Hugging Face GPT-2 format (sample.py, GPT.from_pretrained and
transformers load it), train_state.pt for --resume, log.jsonl and loss.png. Bad input: one line, exit 2;
Ctrl-C: saves, then exit 130. See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pigpt.model.textform import unescape
from pigpt.training import lm
from pigpt.training.run import ArgumentParser, TrainError, cli, run_kind


def build_parser() -> argparse.ArgumentParser:
    """The flags, in groups: the run (shared by every training mode), then next-token training's own.
    A second mode adds its group here and dispatches on its selecting flag in main()."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       argument_default=None)
    g = p.add_argument_group("the run")
    g.add_argument("--out", type=Path, default=Path("out"), help="run directory (default out)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where it stopped, as what it was (GRPO or next-token training)")
    g.add_argument("--overwrite", action="store_true", help="replace the model already in --out")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--num-threads", type=int, help="torch CPU threads, >= 1 (default: torch's, split among local "
                                                   "processes)")
    g.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"],
                   help="precision of the saved model files (default float32; float16 under the default preset; "
                        "train_state.pt stays float32)")
    g.add_argument("--seed", type=int, help="seed of the init, the data order and the samples (default 1337)")

    g = p.add_argument_group("next-token training")
    add = g.add_argument
    add("--preset", choices=sorted(lm.PRESETS), help="size and schedule preset (default: default)")
    add("--data", help="a text file, a directory of text/code files, or a quoted glob (default: the stdlib's "
                       "prose and code)")
    add("--wordnet", action=argparse.BooleanOptionalAction,
        help="take WordNet's sentences and questions into the default corpus (no --data) where WordNet is "
             "installed (apt-get install wordnet-base). Default: on, off under --preset stdlib")
    add("--wordnet-repeats", metavar="S,K,Q",
        help="copies per epoch of WordNet's sentences, kind questions and superlative questions (default 1,4,256; "
             "3,3,3 under --preset wordnet)")
    add("--code-repeats", type=int, metavar="N",
        help="copies per epoch of the standard library's code-on-request documents ('Can you give me some "
             "Python code? Here is a function that ...'; default 1, 4 under the default preset)")
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

    g = p.add_argument_group("GRPO (with --reward: reinforcement learning on --prompts instead of next-token "
                             "training; TRL's GRPOConfig names; --init defaults to pigpt/model/default, --lr to 1e-5, "
                             "--temperature/--top-k/--top-p to 1/0/1 and set the rollouts' sampling)")
    g.add_argument("--reward", action="append", metavar="SPEC",
                   help="reward function: python_compiles, contains:WORD, regex:PATTERN, path/file.py:function or "
                        "module:function (TRL's signature); repeatable, the total is their weighted sum")
    g.add_argument("--reward-weights", type=float, nargs="+", metavar="W", help="one weight per --reward (default 1)")
    g.add_argument("--prompts", metavar="FILE", help="prompts, one per line (\\n, \\t, \\\\ for a newline, a tab, a "
                                                      "backslash), or JSON lines with a \"prompt\" key and extra "
                                                      "columns passed to the rewards")
    g.add_argument("--num-generations", type=int, help="rollouts per prompt, G (default 8)")
    g.add_argument("--prompts-per-step", type=int, help="prompts per step (default 8): P x G rollouts a step")
    g.add_argument("--max-completion-length", type=int, help="new tokens per rollout at most (default 64)")
    g.add_argument("--beta", type=float, help="KL coefficient against the frozen --init model (default 0.0)")
    g.add_argument("--epsilon", type=float, help="clip range of the ratio, 1 +- epsilon (default 0.2)")
    g.add_argument("--epsilon-high", type=float, help="upper clip epsilon (default: --epsilon)")
    g.add_argument("--loss-type", choices=["grpo", "bnpo", "dr_grpo", "dapo"], help="loss aggregation (default dapo)")
    g.add_argument("--scale-rewards", choices=["group", "batch", "none"], help="advantage scaling (default group)")
    g.add_argument("--num-iterations", type=int, help="updates per batch of rollouts (default 1)")
    g.add_argument("--mask-truncated-completions", action="store_true", default=None,
                   help="leave rollouts cut by --max-completion-length out of the loss")
    g.add_argument("--min-p", type=float, help="the rollouts' min-p: keep tokens with probability >= min_p x the top "
                                               "token's (default 0: off)")
    g.add_argument("--typical-p", type=float, help="the rollouts' typical sampling mass (default 1: off)")
    g.add_argument("--epsilon-cutoff", type=float, help="the rollouts' epsilon sampling cutoff (default 0: off; not "
                                                        "--epsilon, GRPO's clip range)")
    g.add_argument("--eta-cutoff", type=float, help="the rollouts' eta sampling cutoff (default 0: off)")
    g.add_argument("--repetition-penalty", type=float, help="the rollouts' repetition penalty (default 1)")
    g.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=None,
                   help="run the policy (and reference) batch-invariant, so that the trainer's log-probs equal the "
                        "rollouts' bit for bit (mismatch 0.0); default: on where it runs (float32 on the CPU)")
    g.add_argument("--stop", action="append", metavar="TEXT", type=unescape,
                   help="stop string of the rollouts (repeatable; \\n, \\t and \\\\ are a newline, a tab and a "
                        "backslash, as in --prompts: --stop \"\\n\\n\" stops at a blank line)")
    g.add_argument("--learning-rate", type=float, dest="lr", help="alias of --lr")
    g.add_argument("--max-grad-norm", type=float, dest="grad_clip", help="alias of --grad-clip (default 1.0)")
    g.add_argument("--eval-generations", type=int, help="rollouts per prompt in the held-out evaluation (default 16)")
    g.add_argument("--eval-prompts", metavar="FILE", help="prompts of the evaluation (default: --prompts, with "
                                                          "held-out seeds)")

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
    kind = resume_kind(args) if args.resume else None
    if args.reward or kind == "grpo":
        from pigpt.policy import trainer

        _only(args, LM_ONLY, "is for next-token training; drop it with --reward" if args.reward else
              f"is for next-token training, and {args.out} holds a GRPO run; drop it")
        return trainer.main(args)
    _only(args, GRPO_ONLY, "is for GRPO: add --reward SPEC and --prompts FILE")
    return lm.main(args)


def resume_kind(args) -> str:
    """--resume continues the run in --out as what it was: its train_state.pt says GRPO or next-token training,
    so `train.py --resume --out DIR` needs no other flag (and says which it resumes)."""
    kind = run_kind(args.out)  # a next-token run resumed with --reward: the skeleton's start() says how instead
    if kind == "grpo" and not args.reward and os.environ.get("RANK", "0") == "0":
        print(f"resuming the GRPO run in {args.out} with its saved rewards, prompts and settings", flush=True)
    return kind


LM_ONLY = ("preset", "data", "val_fraction", "cache_dir", "n_layer", "n_head", "n_embd", "block_size", "batch_size",
           "grad_accum", "warmup_steps", "lr_decay_steps", "eval_iters", "dropout", "min_lr", "beta1", "beta2", "tabs",
           "dtype", "compile", "samples", "sample_tokens", "prompt", "wordnet", "wordnet_repeats",
           "code_repeats")
GRPO_ONLY = ("reward_weights", "prompts", "num_generations", "prompts_per_step", "max_completion_length", "beta",
             "epsilon", "epsilon_high", "loss_type", "scale_rewards", "num_iterations", "mask_truncated_completions",
             "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "repetition_penalty", "stop", "eval_generations", "eval_prompts")


def _only(args, names, why: str) -> None:
    for name in names:
        if getattr(args, name, None) is not None:
            raise TrainError(f"--{name.replace('_', '-')} {why}")


def run() -> None:
    """The `pigpt-train` command: main() with one-line errors and exit codes (pigpt.training.run.cli)."""
    cli(main)


if __name__ == "__main__":
    run()
