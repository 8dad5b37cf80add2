"""`python train.py ...` from a checkout: the same program as `pigpt-train` (pigpt/train.py)."""

from pigpt.train import run

if __name__ == "__main__":
    run()
