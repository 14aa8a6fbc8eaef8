#!/usr/bin/env bash
# The long fuzzing run of docs/RELIABILITY.md: every target (or those named)
# for LONG_SECONDS each, LONG_JOBS at a time, niced, on a copy of the built
# binaries (so that a rebuild meanwhile changes nothing) and a working copy
# of each committed corpus. Prints a Markdown table of the figures.
#
#   RUSTC_BOOTSTRAP=1 cargo fuzz build -O -a -s none
#   LONG_SECONDS=300 LONG_JOBS=3 bash fuzz/long_run.sh [TARGET...]
#
# At nice 19 the fuzzers take only the CPU that builds and tests leave. Do
# not pause them (SIGSTOP) to free the CPU for a benchmark: libFuzzer's
# -timeout counts wall time, so the input running at the pause is reported
# as a timeout on resume and the target's run ends there.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

seconds=${LONG_SECONDS:-300}
jobs=${LONG_JOBS:-3}
out=${LONG_OUT:-fuzz/target/long-run}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi

mkdir -p "$out/bin" "$out/logs"
for t in "${targets[@]}"; do
    cp fuzz/target/x86_64-unknown-linux-gnu/release/"$t" "$out/bin/$t" || exit 1
done

dict_of() {
    case $1 in
        outer_responder | inner_node) echo handshake ;;
        ops_request | ops_reply) echo ops ;;
        grant | control) echo grant ;;
        proxy_v1 | proxy_v2) echo proxy ;;
        *) echo "$1" ;;
    esac
}

run_one() {
    local t=$1
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
    if [ -d "fuzz/corpus/$t" ]; then
        cp -n fuzz/corpus/"$t"/* "$out/corpus/$t/" 2>/dev/null || true
    fi
    local args=()
    if [ -f "fuzz/dict/$(dict_of "$t").dict" ]; then
        args+=(-dict="fuzz/dict/$(dict_of "$t").dict")
    fi
    nice -n 19 "$out/bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" "${args[@]}" \
        "$out/corpus/$t" > "$out/logs/$t.log" 2>&1
}

running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
    run_one "$t" &
    running=$((running + 1))
done
wait

echo "| target | seconds | executions | exec/s | cov | ft | corpus | crashes |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for t in "${targets[@]}"; do
    log="$out/logs/$t.log"
    # A run that ended on a crash prints no "Done" line: its seconds are
    # those of the last status line.
    secs=$(grep -a -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 | awk '{print $5}')
    runs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    last=$(grep -a -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
    corpus=$(find "$out/corpus/$t" -type f | wc -l)
    crashes=$(find "$out/artifacts/$t" -type f -name 'crash-*' -o -type f -name 'oom-*' -o -type f -name 'timeout-*' -o -type f -name 'leak-*' | wc -l)
    rate=$(( ${runs:-0} / ${secs:-1} ))
    echo "| $t | ${secs:-?} | ${runs:-?} | $rate | ${cov:-?} | ${ft:-?} | $corpus | $crashes |"
done
