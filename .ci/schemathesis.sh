#!/usr/bin/env bash
# Schema conformance: runs schemathesis against /openapi.json of a running
# server and fails on any 5xx or any response that does not match the
# document (status, content type, headers, body schema).
#
#   .ci/schemathesis.sh PATH/TO/eloquent [extra schemathesis args...]
#
# The server runs on a free port with a throwaway SQLite database, no rate
# limits, and a fake OpenAI endpoint (.ci/fake_openai.py) so the chat routes
# answer for real. Three passes: with a signed-up user's token on every
# request (required-auth routes too), anonymous, and with that user's expired
# token (every route must document its 401). The WebSocket route is skipped
# (not request/response HTTP). Exits non-zero on any failure or 5xx.
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 100) examples per operation,
# SCHEMATHESIS_SEED for a reproducible run, ELOQUENT_VENV for the virtualenv
# (default: a cache directory, reused when present; schemathesis and its
# dependencies are pinned in .ci/schemathesis-requirements.txt), KEEP_WORK=1
# keeps the work directory (server log, schemathesis event logs).
set -euo pipefail

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

[[ $# -ge 1 ]] || die "usage: $0 PATH/TO/eloquent [schemathesis args...]"
BINARY=$1
shift
[[ -x $BINARY ]] || die "$BINARY is not an executable (build it first: cargo build)"
BINARY=$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v curl >/dev/null 2>&1 || die "curl is needed"

# ------------------------------------------------------------ virtualenv

VENV=${ELOQUENT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/eloquent-venv}
if [[ ! -x $VENV/bin/python ]]; then
    echo "creating virtualenv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
# schemathesis and its dependencies, pinned; reinstalled when the pins change.
REQUIREMENTS=$HERE/schemathesis-requirements.txt
STAMP=$VENV/.eloquent-requirements
if ! cmp -s "$REQUIREMENTS" "$STAMP"; then
    echo "installing $(grep -i '^schemathesis==' "$REQUIREMENTS") into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$STAMP"
fi
SCHEMATHESIS=$VENV/bin/schemathesis

# ------------------------------------------------------------ processes

WORK=$(mktemp -d /tmp/eloquent-st.XXXXXX)
SERVER_PID=""
FAKE_PID=""

cleanup() {
    local pid
    for pid in $SERVER_PID $FAKE_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until $1 answers (any HTTP status), or dies naming $2.
wait_for() {
    local url=$1 what=$2 pid=$3 log=$4
    for _ in $(seq 1 150); do
        if curl -s -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$log" >&2 || true
            die "$what exited before answering"
        fi
        sleep 0.1
    done
    cat "$log" >&2 || true
    die "$what did not answer on $url within 15 s"
}

FAKE_PORT=$(free_port)
python3 "$HERE/fake_openai.py" "$FAKE_PORT" >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
wait_for "http://127.0.0.1:$FAKE_PORT/" "fake OpenAI server" "$FAKE_PID" "$WORK/fake.log"

PORT=$(free_port)
JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
BASE=http://127.0.0.1:$PORT
# A clean environment: nothing from the caller's .env or shell leaks in
# (the server reads .env from its working directory, hence cd "$WORK").
(
    cd "$WORK"
    exec env -i PATH="$PATH" HOME="$WORK" \
        HOST=127.0.0.1 PORT="$PORT" \
        DATABASE_URL="sqlite:///$WORK/s.db" \
        RATE_LIMIT_AUTH_PER_MINUTE=0 RATE_LIMIT_CHAT_PER_MINUTE=0 \
        BCRYPT_COST=4 JWT_SECRET="$JWT_SECRET" \
        OPENAI_API_KEY=sk-fake OPENAI_BASE_URL="http://127.0.0.1:$FAKE_PORT/v1" \
        RUST_LOG=warn \
        "$BINARY"
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
wait_for "$BASE/health" "eloquent" "$SERVER_PID" "$WORK/server.log"
echo "eloquent on $BASE (fake OpenAI on 127.0.0.1:$FAKE_PORT, work dir $WORK)"

# ------------------------------------------------------------ tokens

signup=$(curl -s -X POST "$BASE/api/auth/signup" -H 'Content-Type: application/json' \
    -d '{"email": "schemathesis@example.com", "name": "Schemathesis", "password": "correct horse battery"}')
TOKEN=$(printf '%s' "$signup" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["access_token"])') ||
    die "signup failed: $signup"
# The same user's token, expired an hour ago (signed like the server signs).
EXPIRED=$(printf '%s' "$signup" | python3 -c '
import base64, hashlib, hmac, json, sys, time
user = json.load(sys.stdin)["data"]["user"]
def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"user_id": str(user["id"]), "email": user["email"], "exp": int(time.time()) - 3600}).encode())
signature = hmac.new(sys.argv[1].encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(signature)}")
' "$JWT_SECRET")
# Conversation 1 owned by that user, 2 anonymous: the documented example id (1)
# then reaches a real row, and the anonymous pass meets someone else's conversation.
for auth in "Authorization: Bearer $TOKEN" "X-Anonymous: 1"; do
    curl -s -o /dev/null -X POST "$BASE/api/chat/create" -H "$auth" \
        -H 'Content-Type: application/json' -d '{"conversation_id": null, "message": "How do I reset my PIN?"}'
done

# ------------------------------------------------------------ run

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,missing_required_header
seed_args=()
if [[ -n ${SCHEMATHESIS_SEED:-} ]]; then
    seed_args=(--seed "$SCHEMATHESIS_SEED")
fi
EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
PASSES=()
status=0

# run_pass NAME MAX_EXAMPLES [schemathesis args...]
run_pass() {
    local name=$1 examples=$2 rc=0
    shift 2
    printf '\n==> schemathesis pass: %s (%s examples per operation)\n' "$name" "$examples"
    PASSES+=("$name")
    # In $WORK: schemathesis looks for a config file in its working directory.
    (
        cd "$WORK"
        "$SCHEMATHESIS" run "$BASE/openapi.json" \
            --checks "$CHECKS" \
            --exclude-path '/api/chat/ws/{conversation_id}' \
            --max-examples "$examples" \
            --workers 1 \
            --request-timeout 30 \
            --generation-database none \
            --no-color \
            --report ndjson --report-ndjson-path "$WORK/events-$name.ndjson" \
            "${seed_args[@]}" "$@"
    ) || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "schemathesis pass '$name' failed (exit code $rc)" >&2
        status=$rc
    fi
}

started=$(date +%s)
run_pass authenticated "$EXAMPLES" --header "Authorization: Bearer $TOKEN" "$@"
# No header from us: schemathesis sends none or garbage tokens (anonymous callers).
run_pass anonymous "$EXAMPLES" "$@"
# Every route must document the 401 "Token expired".
run_pass expired-token "$(((EXAMPLES + 4) / 5))" --header "Authorization: Bearer $EXPIRED" "$@"
elapsed=$(($(date +%s) - started))
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "eloquent exited during the run" >&2
    status=1
fi

# Counts from the event logs: operations, requests, statuses, 5xx answers.
summary=0
python3 - "$WORK" "$elapsed" "$status" "${PASSES[@]}" <<'PY' || summary=$?
import collections, json, os, sys

work, elapsed, status, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
total = errors = 0
operations = set()
for name in passes:
    statuses = collections.defaultdict(collections.Counter)
    path = os.path.join(work, f"events-{name}.ndjson")
    if not os.path.exists(path):
        print(f"pass {name}: no event log")
        errors += 1
        continue
    with open(path, encoding="utf-8") as events:
        for line in events:
            try:
                recorder = json.loads(line).get("ScenarioFinished", {}).get("recorder")
            except ValueError:
                continue
            if not recorder:
                continue
            for interaction in (recorder.get("interactions") or {}).values():
                response = (interaction or {}).get("response") or {}
                statuses[recorder.get("label", "?")][response.get("status_code", "no response")] += 1
    requests = sum(sum(counter.values()) for counter in statuses.values())
    server_errors = sum(
        count for counter in statuses.values() for code, count in counter.items()
        if not isinstance(code, int) or code >= 500
    )
    print(f"pass {name}: {len(statuses)} operations, {requests} requests, {server_errors} 5xx or unanswered")
    for label in sorted(statuses):
        counts = ", ".join(f"{code}: {count}" for code, count in sorted(statuses[label].items(), key=str))
        print(f"  {label:<36} {counts}")
    operations.update(statuses)
    total += requests
    errors += server_errors + (requests == 0)
print(f"schemathesis: {len(operations)} operations, {total} requests, {errors} 5xx or unanswered, "
      f"exit code {status}, {elapsed} s")
sys.exit(1 if errors else 0)
PY
if [[ $summary -ne 0 && $status -eq 0 ]]; then
    echo "schemathesis exited 0 but the event logs show 5xx answers or no requests" >&2
    status=1
fi

# /metrics after all that traffic, read by the Prometheus project's own
# Python client (its OpenMetrics parser): it must parse, and have counted
# the requests and the chat turns.
if ! curl -sf "$BASE/metrics" -o "$WORK/metrics.txt" \
    || ! "$VENV/bin/python" - "$WORK/metrics.txt" <<'PY'
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families

with open(sys.argv[1], encoding="utf-8") as exposition:
    families = {family.name: family for family in text_string_to_metric_families(exposition.read())}
def total(name, suffix="_total"):
    return sum(s.value for s in families[name].samples if s.name == name + suffix)
requests, turns = total("eloquent_http_requests"), total("eloquent_chat_turns")
print(f"/metrics: {len(families)} families parsed by prometheus_client; "
      f"{requests:.0f} requests and {turns:.0f} chat turns counted")
sys.exit(0 if requests > 0 and turns > 0 else 1)
PY
then
    echo "/metrics did not parse as OpenMetrics or counted nothing" >&2
    status=1
fi

if [[ $status -ne 0 ]]; then
    echo "schemathesis found failures (server log: last lines below)" >&2
    tail -n 40 "$WORK/server.log" >&2 || true
    exit "$status"
fi
echo "schemathesis: no failures"
