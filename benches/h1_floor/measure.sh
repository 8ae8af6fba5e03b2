#!/bin/bash
# The floor of an HTTP/1 keep-alive answer in Rust on tokio: instructions per request of
# hyper's server and of a minimal loop (httparse into an http::Request, the answer written from
# one buffer), both answering a small 401, under callgrind; wrk on CPU 0, the server on CPU 1.
#   benches/h1_floor/measure.sh hyper; benches/h1_floor/measure.sh minimal
set -u
cd "$(dirname "$0")"
[ -x target/release/h1floor ] || cargo build --release --quiet
mode=$1
rm -f cg.$mode.*
taskset -c 1 valgrind --tool=callgrind --callgrind-out-file=$PWD/cg.$mode.out ./target/release/h1floor $mode > /dev/null 2>&1 &
vpid=$!
sleep 3
taskset -c 0 wrk -t1 -c8 -d2 http://127.0.0.1:18999/api/x > /dev/null
callgrind_control -z $vpid > /dev/null
n=$(taskset -c 0 wrk -t1 -c8 -d5 http://127.0.0.1:18999/api/x | awk '/requests in/ {print $1}')
callgrind_control -d $vpid > /dev/null
sleep 1
kill $vpid; wait $vpid 2>/dev/null
f=$(ls -t $PWD/cg.$mode.out.* | head -1)
tot=$(callgrind_annotate --threshold=100 $f 2>/dev/null | grep "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
echo "$mode requests=$n instr/req=$((tot / n))"
