#!/bin/sh
# Register (or update) a connector with Kafka Connect, then wait until it and all of its tasks
# are RUNNING.
#
#   usage: register.sh [--dry-run] CONNECTOR_JSON CONNECT_URL
#
# CONNECTOR_JSON is a {"name": ..., "config": {...}} document such as connect/crmsync-postgres.json
# (the same file the embedded engine runs). --dry-run prints the config object that would be sent
# and contacts nothing. REGISTER_TIMEOUT (seconds, default 300) bounds the whole run;
# REGISTER_POLL_INTERVAL (seconds, default 2) is the pause between two polls of the REST API.
#
# PUT /connectors/<name>/config creates the connector or updates it in place, so running this again
# is harmless (POST /connectors answers 409 once the connector exists). That endpoint takes only
# the "config" object. The curl image has no jq, so json_member extracts a top-level member with a
# small awk scanner that knows JSON strings (escapes included) and nesting: it does not depend on
# how the file is laid out, and it copies the member's bytes verbatim, so Connect receives exactly
# what the file says (including the ${file:...} placeholder, resolved by Connect's
# FileConfigProvider). Plain POSIX sh + awk: runs on busybox (curlimages/curl) and on Debian.
set -eu

log() { printf 'register: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# json_member FILE KEY: print the raw JSON text of member KEY of the top-level object in FILE.
json_member() {
    awk -v key="$2" '
        { doc = doc $0 "\n" }
        END {
            n = length(doc); depth = 0; in_str = 0; esc = 0; want = 0; vstart = 0; found = 0
            target = "\"" key "\""; last = ""
            for (i = 1; i <= n; i++) {
                c = substr(doc, i, 1)
                if (in_str) {
                    if (esc) { esc = 0 }
                    else if (c == "\\") { esc = 1 }
                    else if (c == "\"") {
                        in_str = 0
                        last = substr(doc, sstart, i - sstart + 1)
                        if (vstart && depth == 1) { out = last; found = 1; break }
                    }
                    continue
                }
                if (want && c !~ /[ \t\r\n]/) { want = 0; vstart = i }
                if (c == "\"") { in_str = 1; sstart = i }
                else if (c == "{" || c == "[") { depth++ }
                else if (c == "}" || c == "]") {
                    depth--
                    if (vstart && depth == 1) { out = substr(doc, vstart, i - vstart + 1); found = 1; break }
                    if (vstart && depth == 0) { out = substr(doc, vstart, i - vstart); found = 1; break }
                }
                else if (c == ":" && depth == 1 && !vstart && last == target) { want = 1 }
                else if (c == "," && depth == 1 && vstart) {
                    out = substr(doc, vstart, i - vstart); found = 1; break
                }
            }
            if (!found) exit 1
            sub(/[ \t\r\n]+$/, "", out)
            print out
        }
    ' "$1"
}

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=1
    shift
fi
if [ $# -ne 2 ] && ! { [ "$dry_run" = 1 ] && [ $# -eq 1 ]; }; then
    echo "usage: $0 [--dry-run] CONNECTOR_JSON CONNECT_URL" >&2
    exit 2
fi
json=$1
[ -r "$json" ] || die "cannot read $json"

name=$(json_member "$json" name) || die "$json has no top-level \"name\""
name=${name#\"}
name=${name%\"}
case $name in
    '' | *[!A-Za-z0-9._-]*) die "connector name must match [A-Za-z0-9._-]+, got: $name" ;;
esac
config=$(json_member "$json" config) || die "$json has no top-level \"config\""
case $config in
    '{'*) ;;
    *) die "\"config\" in $json is not an object" ;;
esac

if [ "$dry_run" = 1 ]; then
    printf '%s\n' "$config"
    exit 0
fi

url=${2%/}
timeout=${REGISTER_TIMEOUT:-300}
interval=${REGISTER_POLL_INTERVAL:-2}
deadline=$(($(date +%s) + timeout))
body=$(mktemp)
trap 'rm -f "$body"' EXIT INT TERM

time_left() { [ "$(date +%s)" -lt "$deadline" ]; }

# all_running STATE...: the connector's state and at least one task state, all RUNNING.
all_running() {
    [ $# -ge 2 ] || return 1
    for state in "$@"; do
        [ "$state" = RUNNING ] || return 1
    done
}

# 1. PUT the config. Connect answers 409 while its worker group rebalances and 5xx (or nothing)
#    while it starts: retry those. Any other error (400: invalid config) will not fix itself.
log "PUT $url/connectors/$name/config"
while :; do
    code=$(printf '%s' "$config" | curl -sS -o "$body" -w '%{http_code}' -X PUT \
        -H 'Content-Type: application/json' --data-binary @- \
        "$url/connectors/$name/config") || code=000
    case $code in
        200 | 201) break ;;
        409 | 5?? | 000) ;;
        *) die "PUT answered HTTP $code: $(cat "$body")" ;;
    esac
    time_left || die "gave up after ${timeout}s: PUT still answers HTTP $code"
    sleep "$interval"
done
log "config accepted (HTTP $code); waiting for $name and its tasks to be RUNNING"

# 2. Poll the status until the connector and every task (at least one) are RUNNING. The status
#    document lists the connector's "state" first, then one per task; error traces are JSON
#    strings, so their quotes are escaped and cannot match the pattern below.
seen=
while :; do
    status=$(curl -fsS "$url/connectors/$name/status" 2>/dev/null) || status=
    states=$(printf '%s' "$status" | tr -d ' \t\r\n' | grep -o '"state":"[A-Z_]*"' |
        cut -d '"' -f 4 | tr '\n' ' ') || states=
    states=${states% }
    if [ "$states" != "$seen" ]; then
        log "states (connector, then tasks): ${states:-none yet}"
        seen=$states
    fi
    case " $states " in
        *" FAILED "*) die "$name failed: $status" ;;
        *" PAUSED "* | *" STOPPED "*)
            die "$name is paused or stopped; resume it: curl -X PUT $url/connectors/$name/resume" ;;
    esac
    # $states is unquoted on purpose: one argument per state (they are [A-Z_]+ words).
    # shellcheck disable=SC2086
    if all_running $states; then
        log "$name is RUNNING"
        exit 0
    fi
    time_left || die "gave up after ${timeout}s waiting for RUNNING: $status"
    sleep "$interval"
done
