#!/usr/bin/env bash
# Starts the stand-in guardrail judge (a local classifier behind the OpenAI
# chat-completions wire format). Creates the venv on first use.
#   bash bench/judge/run.sh [--port 8089] [--eval-dir DIR] [--benign FILE] [--retrain] ...
# Other commands in the same venv:
#   bash bench/judge/run.sh --eval [eval.py options]    # e.g. --eval --url http://127.0.0.1:8089/v1
#   bash bench/judge/run.sh --train
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ELOQUENT_JUDGE_VENV:-$HOME/.cache/eloquent-judge-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "installing bench/judge/requirements.txt into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
# Keep CPU use modest on a shared machine: one BLAS thread.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
case "${1:-}" in
    --eval) shift; exec "$venv/bin/python" "$here/eval.py" "$@" ;;
    --train) shift; exec "$venv/bin/python" "$here/train.py" "$@" ;;
    *) exec "$venv/bin/python" -u "$here/judge_server.py" "$@" ;;
esac
