"""`python sample.py ...` from a checkout: the same program as `pigpt-sample` (pigpt/sample.py)."""

from pigpt.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
