# common.sh - sourced by tests/test_serve_*.sh: node and the openai package,
# a synthetic model, starting and stopping one `cellm serve` on a free
# loopback port. Only the server pid started here is ever signalled.
set -u
: "${CELLM_BIN:?CELLM_BIN must point at the cellm binary}"
CELLM_SRC=${CELLM_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
CELLM_TMP=${CELLM_TMP:-$(dirname "$CELLM_BIN")/tmp}
mkdir -p "$CELLM_TMP"
SERVER_PID=
SERVER_LOG=

NODE_DIR=

serve_cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    [ -n "$NODE_DIR" ] && rm -rf "$NODE_DIR"
}
trap serve_cleanup EXIT

# node >= 18 (fetch, ESM); installs Debian's nodejs when missing and allowed.
serve_need_node() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing nodejs and npm (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null 2>&1 ||
                { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null 2>&1; }
        fi
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "SKIP: node/npm are not available and could not be installed"
        exit 0
    fi
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$major" -lt 18 ]; then
        echo "SKIP: node $(node --version) is too old (need 18 or later)"
        exit 0
    fi
    # node_modules lives in the build tree ($NODE_ROOT); each run copies the
    # scripts into its own folder below it, where ESM resolution finds the
    # package by walking up. The install is serialised with flock so that
    # tests running in parallel do not install over each other.
    NODE_ROOT=$CELLM_TMP/serve-node
    NODE_DIR=$NODE_ROOT/run-$$
    mkdir -p "$NODE_DIR"
    cp "$CELLM_SRC"/tests/serve/*.mjs "$NODE_DIR"/
    (
        command -v flock >/dev/null 2>&1 && flock 9
        cp "$CELLM_SRC"/tests/serve/package.json "$NODE_ROOT"/package.json
        want=$(node -p "require('$NODE_ROOT/package.json').dependencies.openai")
        have=$(node -p "try{require('$NODE_ROOT/node_modules/openai/package.json').version}catch(e){''}")
        if [ "$want" != "$have" ]; then
            echo "installing openai@$want from npm into $NODE_ROOT"
            (cd "$NODE_ROOT" && npm install --no-audit --no-fund --loglevel=error --cache "$CELLM_TMP/npm-cache" >/dev/null) || {
                echo "FAIL: npm install openai@$want failed (is the npm registry reachable?)"
                exit 1
            }
        fi
    ) 9>"$CELLM_TMP/serve-node.lock" || exit 1
}

serve_model() {
    SERVE_MODEL=$CELLM_TMP/serve-tiny.gguf
    # Locked: the serve tests may run in parallel and share this file.
    (
        command -v flock >/dev/null 2>&1 && flock 9
        if [ ! -s "$SERVE_MODEL" ]; then
            "$CELLM_BIN" model synth -o "$SERVE_MODEL" --arch llama --embd 64 --layers 2 --heads 4 --kv-heads 2 \
                --ffn 128 --vocab 512 --type f16 --seed 1 >/dev/null 2>&1 || { echo "FAIL: model synth"; exit 1; }
        fi
    ) 9>"$CELLM_TMP/serve-model.lock" || exit 1
    export CELLM_MODEL=serve-tiny
}

# serve_start ARGS...: starts the server on a free port, sets CELLM_URL.
serve_start() {
    SERVER_LOG=$CELLM_TMP/serve-$$-$RANDOM.log
    "$CELLM_BIN" serve -m "$SERVE_MODEL" --host 127.0.0.1 --port 0 "$@" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    local i port=
    for i in $(seq 1 600); do
        port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$SERVER_LOG")
        [ -n "$port" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "FAIL: the server did not start:"
            cat "$SERVER_LOG"
            exit 1
        fi
        sleep 0.1
    done
    if [ -z "$port" ]; then
        echo "FAIL: the server printed no port within 60 s"
        cat "$SERVER_LOG"
        exit 1
    fi
    export CELLM_URL=http://127.0.0.1:$port
    echo "server pid $SERVER_PID at $CELLM_URL ($*)"
}

# serve_stop: SIGTERM, then the exit code must be 0 (under ASan this is also
# where leaks are reported).
serve_stop() {
    kill -TERM "$SERVER_PID"
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    if [ "$rc" != 0 ]; then
        echo "FAIL: the server exited with $rc after SIGTERM:"
        tail -50 "$SERVER_LOG"
        return 1
    fi
    echo "server stopped cleanly"
}

# serve_node SCRIPT.mjs [timeout_s]
serve_node() {
    (cd "$NODE_DIR" && timeout "${2:-300}" node "$1")
}

# Runs promtool check metrics on /metrics; installs Debian's prometheus
# package for promtool when missing and allowed.
serve_promtool() {
    if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing prometheus (for promtool)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null 2>&1; }
    fi
    if ! command -v promtool >/dev/null 2>&1; then
        echo "SKIP promtool check: promtool is not available and could not be installed"
        return 0
    fi
    local out=$CELLM_TMP/serve-metrics-$$.txt
    curl -sf "$CELLM_URL/metrics" >"$out" || { echo "FAIL: GET /metrics"; return 1; }
    if promtool check metrics <"$out"; then
        echo "ok   promtool check metrics"
    else
        echo "FAIL promtool check metrics"
        return 1
    fi
}
