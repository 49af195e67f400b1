#!/bin/bash
# A no-op agent following the ccci-dist agent contract: prompt on stdin, one stream-json
# "result" line on stdout, commits nothing. Used by the benchmarks.
#   BENCH_AGENT_LOG=FILE    append {"event":"start"|"stop",run,role,iteration,pid,host,t} lines (one write each)
#   BENCH_AGENT_SLEEP=SECS  stay busy this long (an event line every second, so the stall limit never fires)
IFS= read -r first
cat >/dev/null
ctx="${first#<!-- ccci: }"
run=""; role=""; it=""
for kv in $ctx; do
  case "$kv" in
    run=*) run="${kv#run=}" ;;
    role=*) role="${kv#role=}" ;;
    iteration=*) it="${kv#iteration=}" ;;
  esac
done
host="${CCCI_HOSTNAME:-$HOSTNAME}"
rec() {
  [ -n "$BENCH_AGENT_LOG" ] || return 0
  printf '{"event":"%s","run":"%s","role":"%s","iteration":"%s","pid":%d,"host":"%s","t":%s}\n' \
    "$1" "$run" "$role" "$it" "$$" "$host" "$EPOCHREALTIME" >>"$BENCH_AGENT_LOG"
}
rec start
if [ -n "$BENCH_AGENT_SLEEP" ]; then
  end=$(( ${EPOCHSECONDS} + ${BENCH_AGENT_SLEEP%.*} ))
  while [ "$EPOCHSECONDS" -lt "$end" ]; do
    echo '{"type":"assistant","message":{"content":[{"type":"text","text":"working"}]}}'
    sleep 1
  done
fi
echo '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"noop","session_id":"noop-session","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0},"duration_ms":0}'
rec stop
