# Sourced by scripts/bench.sh and scripts/ab.sh: the start and the end of a lockstep pair.
#
#   lockstep_finish LABEL FIFO PID1 PID2
#
# Gives the first turn (one byte into FIFO, which the first side waits on), then waits for
# both processes; if one fails, kills the other (it would wait for its turn forever) and
# returns 1.
lockstep_finish() {
  local label="$1" fifo="$2" p1="$3" p2="$4" fd rc=0
  # Opened read-write, so neither this open nor the write waits for a reader, and kept
  # open until the end, so the byte stays in the pipe until the first side reads it.
  exec {fd}<>"$fifo"
  printf x >&"$fd"
  if ! wait -n "$p1" "$p2" || ! wait "$p1" || ! wait "$p2"; then
    kill "$p1" "$p2" 2>/dev/null || true
    echo "$label: a side failed" >&2
    rc=1
  fi
  exec {fd}>&-
  return "$rc"
}
