#!/usr/bin/env python3
"""Trains the stand-in judge on the tuning split and saves it (outside the
repository, default ~/.cache/eloquent-judge/model.joblib). judge_server.py
and eval.py load that file, or train the same way when it is missing or was
trained on other data."""

import argparse
from pathlib import Path

import common
import model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval-dir", type=Path, default=common.DEFAULT_EVAL_DIR)
    parser.add_argument("--benign", type=Path, default=common.default_benign())
    parser.add_argument("--model", type=Path, default=common.DEFAULT_MODEL)
    args = parser.parse_args()
    examples = common.load(args.eval_dir.expanduser(), args.benign)
    model.load_or_train(examples, args.model.expanduser(), retrain=True)


if __name__ == "__main__":
    main()
