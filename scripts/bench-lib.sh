# Shared by the benchmark scripts (source it; bash only, no Python): the last line a benchmark
# writes to stdout is one JSON object, whether it finished or a section failed:
#
#   {"benchmark":"serve","ok":false,<figures...>,"sections":{"setup":{"status":"failed"},...},
#    "failures":[{"section":"setup","error":"wrk not found (apt-get install wrk, or: make bench)"}]}
#
# Usage:
#   source scripts/bench-lib.sh
#   bench_init serve setup raw server python report   # name, then the sections in order
#   bench_section raw            # the section now running (its failure is recorded under it)
#   bench_record raw '{"x":1}'   # figures of a section (a JSON object), kept in its entry
#   bench_figures '{"x":1}'      # figures merged into the top level of the final object
#   bench_fail "message"         # records the current section's failure and exits 1
#   bench_wrk_post LUA BODY CTYPE  # writes a wrk script that POSTs file BODY as CTYPE
#   bench_multipart BODY IMAGE N   # writes a multipart/form-data body of N copies of IMAGE
# Any command that fails under `set -e` is recorded too (an ERR trap: the failed command and its
# status), and an EXIT trap writes the object, then runs the script's own cleanup, bench_cleanup,
# when it defines one. Sections that never started are reported "skipped".

set -eE -o pipefail

BENCH_NAME=""
BENCH_ORDER=()
declare -A BENCH_STATUS=() BENCH_FIGS=()
BENCH_CURRENT=""
BENCH_FIGURES='{}'
BENCH_ERROR=""
BENCH_ERRFILE=""

# JSON string literal of $1 (quotes, backslashes and control characters escaped).
bench_json_str() {
  local s="$1" out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      '"') out+='\"' ;;
      '\') out+='\\' ;;
      $'\n') out+='\n' ;;
      $'\t') out+='\t' ;;
      $'\r') out+='\r' ;;
      *)
        if [[ "$c" == [[:cntrl:]] ]]; then printf -v c '\\u%04x' "'$c"; fi
        out+="$c"
        ;;
    esac
  done
  printf '"%s"' "$out"
}

# Trims whitespace around $1.
bench_trim() {
  local s="$1"
  s="${s#"${s%%[![:space:]]*}"}"
  s="${s%"${s##*[![:space:]]}"}"
  printf '%s' "$s"
}

# Merges two JSON objects given as text ({"a":1} + {"b":2} -> {"a":1,"b":2}); a value that is not
# an object is ignored, so that a half-written file cannot break the final line.
bench_merge() {
  local a b
  a="$(bench_trim "$1")"; b="$(bench_trim "$2")"
  [[ "$b" == \{*\} ]] || { printf '%s' "$a"; return; }
  [[ "$a" == \{*\} ]] || { printf '%s' "$b"; return; }
  a="$(bench_trim "${a%\}}")"; b="$(bench_trim "${b#\{}")"
  if [[ "$a" == "{" ]]; then printf '{%s' "$b"
  elif [[ "$b" == "}" ]]; then printf '%s}' "$a"
  else printf '%s,%s' "$a" "$b"
  fi
}

# bench_wrk_post LUA BODY CTYPE: a wrk script at LUA that POSTs the bytes of file BODY with
# Content-Type CTYPE on every request.
bench_wrk_post() {
  cat > "$1" <<LUA
local f = assert(io.open("$2", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "$3"
LUA
}

# bench_multipart BODY IMAGE N: a multipart/form-data body of N copies of file IMAGE at BODY
# (boundary BENCH_BOUNDARY), the batched uploads of bench-serve.sh and the scripts beside it.
BENCH_BOUNDARY=caliper-bench
bench_multipart() {
  python3 - "$2" "$3" "$1" "$BENCH_BOUNDARY" <<'PY'
import sys
image, n, b = open(sys.argv[1], "rb").read(), int(sys.argv[2]), sys.argv[4].encode()
form = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"f\"; filename=\"%d.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" % (b, i) + image + b"\r\n" for i in range(n))
open(sys.argv[3], "wb").write(form + b"--%s--\r\n" % b)
PY
}

# bench_v2_body BODY IMAGE N: a KServe V2 JSON request of N copies of file IMAGE as base64
# BYTES strings at BODY (the V2 form of bench_multipart's upload).
bench_v2_body() {
  python3 - "$2" "$3" "$1" <<'PY'
import base64, json, sys
image, n, out = open(sys.argv[1], "rb").read(), int(sys.argv[2]), sys.argv[3]
b64 = base64.b64encode(image).decode()
v2 = {"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES", "data": [b64] * n}]}
open(out, "w").write(json.dumps(v2))
PY
}

bench_init() {
  BENCH_NAME="$1"; shift
  BENCH_ORDER=("$@")
  BENCH_ERRFILE="$(mktemp)"
  local s
  for s in "$@"; do BENCH_STATUS[$s]=skipped; BENCH_FIGS[$s]='{}'; done
  trap 'bench_on_err $? "$BASH_COMMAND"' ERR
  trap bench_on_exit EXIT
}

bench_section() {
  [[ -z "$BENCH_CURRENT" ]] || BENCH_STATUS[$BENCH_CURRENT]=ok
  BENCH_CURRENT="$1"
  [[ -n "${BENCH_STATUS[$1]+x}" ]] || { BENCH_ORDER+=("$1"); BENCH_FIGS[$1]='{}'; }
  BENCH_STATUS[$1]=running
  echo "== $BENCH_NAME: $1" >&2
}

bench_record() {
  [[ -n "${BENCH_STATUS[$1]+x}" ]] || { BENCH_ORDER+=("$1"); BENCH_STATUS[$1]=ok; BENCH_FIGS[$1]='{}'; }
  BENCH_FIGS[$1]="$(bench_merge "${BENCH_FIGS[$1]}" "$2")"
}

bench_figures() { BENCH_FIGURES="$(bench_merge "$BENCH_FIGURES" "$1")"; }

# Also works inside $(...): the message goes through a file, the first one wins.
bench_fail() {
  BENCH_ERROR="$*"
  [[ -z "$BENCH_ERRFILE" || -s "$BENCH_ERRFILE" ]] || printf '%s' "$*" > "$BENCH_ERRFILE"
  echo "error: $*" >&2
  exit 1
}

bench_on_err() {
  [[ -n "$BENCH_ERROR" ]] || BENCH_ERROR="command failed with status $1: $2"
}

bench_on_exit() {
  local rc=$? s failures="" ok=true sections=""
  trap - ERR
  set +e
  if [[ -n "$BENCH_CURRENT" ]]; then
    if ((rc == 0)); then BENCH_STATUS[$BENCH_CURRENT]=ok; else BENCH_STATUS[$BENCH_CURRENT]=failed; fi
  fi
  if ((rc != 0)); then
    ok=false
    [[ -z "$BENCH_ERRFILE" || ! -s "$BENCH_ERRFILE" ]] || BENCH_ERROR="$(<"$BENCH_ERRFILE")"
    [[ -n "$BENCH_ERROR" ]] || BENCH_ERROR="exited with status $rc"
    failures="{\"section\":$(bench_json_str "${BENCH_CURRENT:-setup}"),\"error\":$(bench_json_str "$BENCH_ERROR"),\"status\":$rc}"
  fi
  for s in ${BENCH_ORDER[@]+"${BENCH_ORDER[@]}"}; do
    [[ -z "$sections" ]] || sections+=","
    sections+="$(bench_json_str "$s"):$(bench_merge "{\"status\":\"${BENCH_STATUS[$s]}\"}" "${BENCH_FIGS[$s]}")"
  done
  [[ -z "$BENCH_ERRFILE" ]] || rm -f "$BENCH_ERRFILE"
  if declare -F bench_cleanup >/dev/null; then bench_cleanup >/dev/null 2>&1; fi
  local head="{\"benchmark\":$(bench_json_str "$BENCH_NAME"),\"ok\":$ok}"
  local tail="{\"sections\":{$sections},\"failures\":[$failures]}"
  printf '%s\n' "$(bench_merge "$(bench_merge "$head" "$BENCH_FIGURES")" "$tail")"
  exit "$rc"
}
