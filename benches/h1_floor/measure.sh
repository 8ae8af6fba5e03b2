#!/bin/bash
# The floor of an HTTP/1 keep-alive answer and of a proxy hop in Rust on tokio: instructions
# per request under callgrind; wrk (8 connections) on CPU 0, the measured server on CPU 1.
#   measure.sh hyper | minimal      a small 401 from hyper's server / from a minimal loop
#                                   (httparse into an http::Request, the answer from one buffer)
#   measure.sh proxy-raw            a bare proxy hop whose heads stay bytes (lines copied,
#                                   hop-by-hop ones dropped), one upstream connection per client
#   measure.sh proxy-typed          the same hop with an http::Request and HeaderMap on the
#                                   request side and a HeaderMap on the response side
#   measure.sh nginx                nginx's bare proxy hop (proxy_pass, upstream keep-alive)
# The proxies forward to `h1floor minimal` on port 18998 (not counted).
set -u
cd "$(dirname "$0")"
[ -x target/release/h1floor ] || cargo build --release --quiet
mode=$1
rm -f cg.$mode.*
up=""
case $mode in
  proxy-*|nginx)
    taskset -c 0 ./target/release/h1floor minimal 18998 > /dev/null 2>&1 &
    up=$!
    ;;
esac
if [ "$mode" = nginx ]; then
  d=$(mktemp -d)
  cat > "$d/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d; uwsgi_temp_path $d; scgi_temp_path $d;
  upstream up { server 127.0.0.1:18998; keepalive 32; }
  server {
    listen 127.0.0.1:18999;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  taskset -c 1 valgrind --tool=callgrind --callgrind-out-file=$PWD/cg.$mode.out nginx -c "$d/nginx.conf" > /dev/null 2>&1 &
else
  taskset -c 1 valgrind --tool=callgrind --callgrind-out-file=$PWD/cg.$mode.out ./target/release/h1floor $mode > /dev/null 2>&1 &
fi
vpid=$!
sleep 3
taskset -c 0 wrk -t1 -c8 -d2 http://127.0.0.1:18999/api/x > /dev/null
callgrind_control -z $vpid > /dev/null
n=$(taskset -c 0 wrk -t1 -c8 -d5 http://127.0.0.1:18999/api/x | awk '/requests in/ {print $1}')
callgrind_control -d $vpid > /dev/null
sleep 1
kill $vpid; wait $vpid 2>/dev/null
[ -n "$up" ] && kill $up
f=$(ls -t $PWD/cg.$mode.out.* | head -1)
tot=$(callgrind_annotate --threshold=100 $f 2>/dev/null | grep "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
echo "$mode requests=$n instr/req=$((tot / n))"
