#!/usr/bin/env python3
"""Evaluates the stand-in judge on the issue-17 evaluation set.

Without --url: the classifier alone (loaded from the saved model, or trained
on the tuning split as judge_server.py does), per category, on the held-out
split and, marked as such, on the tuning split it was trained on; plus its
latency per message.

With --url http://127.0.0.1:PORT/v1: a client of any OpenAI-compatible judge
(this stand-in or a real model). Each held-out text is sent exactly as the
server's judge sends it (prompt::JUDGE_PROMPT as system message, the message
fenced by prompt::judge_input, "stream": false), the answer is read as
judge.rs reads it (exactly one JSON object {"verdict": "attack"|"benign"},
else a failure), and the same table is printed with the HTTP latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

import common

BANK = "bank questions (benign.txt)"
ATTACKS = "all attacks"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def table(rows: list[tuple[common.Example, str | None]], title: str) -> None:
    """rows: (example, verdict or None when no verdict could be read)."""
    groups: "OrderedDict[str, list]" = OrderedDict()

    def add(name: str, attack: bool, right: bool, failed: bool) -> None:
        g = groups.setdefault(name, [attack, 0, 0, 0])
        g[1] += right
        g[2] += 1
        g[3] += failed

    ordered = sorted(rows, key=lambda r: (not r[0].attack, r[0].bank, r[0].category))
    for e, verdict in ordered:
        refused = verdict == "attack"
        right = refused == e.attack
        failed = verdict is None
        if e.attack:
            add(e.category, True, right, failed)
        elif e.bank:
            add(BANK, False, right, failed)
        else:
            add(e.category, False, right, failed)
    for e, verdict in ordered:
        if e.attack:
            add(ATTACKS, True, verdict == "attack", verdict is None)
    for e, verdict in ordered:
        if e.bank:
            add(f"  {e.category}", False, verdict != "attack", verdict is None)

    print(title)
    print(f"  {'category':<34} {'':8} {'rate':>7}  {'of':>9}  {'no verdict':>10}")
    attack_names = sorted((n for n, g in groups.items() if g[0] and n != ATTACKS), key=lambda n: -groups[n][2])
    benign_names = [n for n, g in groups.items() if not g[0]]
    benign_names.sort(key=lambda n: (n != BANK and not n.startswith("  "), n != BANK))
    for name in attack_names + [ATTACKS] + benign_names:
        attack, right, total, failed = groups[name]
        rate = f"{100 * right / total:.1f}%" if total else "–"
        print(f"  {name:<34} {'refused' if attack else 'passed':8} {rate:>7}  {right:>4}/{total:<4}  {failed:>10}")
    print()


def classifier_alone(args, examples: list[common.Example]) -> None:
    import model  # needs the venv (scikit-learn)

    bundle = model.load_or_train(examples, args.model.expanduser(), retrain=args.retrain, log=lambda s: print(s, flush=True))
    t = bundle["threshold"]
    print(f"classifier: {bundle['kind']}, C={bundle['C']:g}, threshold {t:.3f} (score >= threshold is an attack)\n")
    held = [e for e in examples if e.held]
    tune = [e for e in examples if not e.held]
    model.score(bundle, [e.text for e in held[:5]])  # warm-up
    latencies, rows = [], []
    for e in held:  # one message a call, as the server classifies
        started = time.perf_counter()
        s = float(model.score(bundle, [e.text])[0])
        latencies.append((time.perf_counter() - started) * 1000)
        rows.append((e, "attack" if s >= t else "benign"))
    table(rows, f"HELD-OUT split ({len(held)} texts, never trained on)")
    tune_scores = model.score(bundle, [e.text for e in tune])
    table(
        [(e, "attack" if s >= t else "benign") for e, s in zip(tune, tune_scores)],
        f"TUNING split ({len(tune)} texts) -- TRAINED ON, not a measure of generalisation",
    )
    chars = sorted(len(e.text) for e in held)
    print(
        f"classifier latency per message (held-out texts, {chars[len(chars) // 2]} chars median, {chars[-1]} max): "
        f"p50 {percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms, "
        f"max {max(latencies):.2f} ms ({len(latencies)} calls)"
    )


def over_http(args, examples: list[common.Example]) -> None:
    repo_prompt = common.prompt_in_repo()
    if repo_prompt is not None and repo_prompt != common.JUDGE_PROMPT:
        print("WARNING: common.JUDGE_PROMPT differs from src/services/prompt.rs; copy it again\n", file=sys.stderr)
    base = urlsplit(args.url.rstrip("/"))
    conn_cls = http.client.HTTPSConnection if base.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(base.hostname, base.port, timeout=args.timeout)
    path = f"{base.path}/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"}
    chosen = [e for e in examples if args.split == "all" or e.held == (args.split == "held")]
    latencies, rows, problems = [], [], []
    for e in chosen:
        body = json.dumps(
            {
                "model": args.model_name,
                "messages": [
                    {"role": "system", "content": common.JUDGE_PROMPT},
                    {"role": "user", "content": common.judge_input(e.text)},
                ],
                "stream": False,
            }
        ).encode()  # bytes: http.client sends headers and body in one write
        started = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            latencies.append((time.perf_counter() - started) * 1000)
            problems.append(f"transport error: {err}")
            rows.append((e, None))
            continue
        latencies.append((time.perf_counter() - started) * 1000)
        verdict = None
        if status != 200:
            problems.append(f"HTTP {status}: {raw[:200]!r}")
        else:
            try:
                content = json.loads(raw)["choices"][0]["message"]["content"]
                verdict = common.parse_verdict(content)
                if verdict is None:
                    problems.append(f"not the JSON asked for: {content[:200]!r}")
            except (ValueError, KeyError, IndexError, TypeError) as err:
                problems.append(f"not a chat completion ({err}): {raw[:200]!r}")
        rows.append((e, verdict))
    split = {"held": "HELD-OUT", "tune": "TUNING (trained on by this stand-in)", "all": "ALL"}[args.split]
    table(rows, f"{split} split over HTTP: {args.url} ({len(chosen)} texts)")
    print(f"answers that parsed as a verdict: {sum(v is not None for _, v in rows)} of {len(rows)}")
    for p in problems[:10]:
        print(f"  {p}")
    print(
        f"HTTP latency per judge call: p50 {percentile(latencies, 0.5):.2f} ms, "
        f"p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms ({len(latencies)} calls)"
    )
    if problems:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, default=common.DEFAULT_EVAL_DIR, help="default ~/.cache/eloquent-eval")
    parser.add_argument("--benign", type=Path, default=common.default_benign())
    parser.add_argument("--model", type=Path, default=common.DEFAULT_MODEL, help="saved classifier (without --url)")
    parser.add_argument("--retrain", action="store_true", help="train even if the saved classifier matches")
    parser.add_argument("--url", help="judge base URL, e.g. http://127.0.0.1:8089/v1: evaluate over HTTP")
    parser.add_argument("--api-key", default="local", help="bearer key sent with --url")
    parser.add_argument("--model-name", default="judge", help='"model" sent with --url')
    parser.add_argument("--split", choices=("held", "tune", "all"), default="held", help="texts sent with --url")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call")
    args = parser.parse_args()
    examples = common.load(args.eval_dir.expanduser(), args.benign)
    if args.url:
        over_http(args, examples)
    else:
        classifier_alone(args, examples)


if __name__ == "__main__":
    main()
