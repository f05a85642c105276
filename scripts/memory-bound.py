#!/usr/bin/env python3
"""Peak RSS of `audithook serve` while large events are read back: 200 events of 1 MB, then
8 slow NDJSON exports (2 MB/s each), 8 listings with limit=1000 and 8 queue reads with
limit=1000 at once (MODE=export|list|queue runs one kind alone; SETTLE=S waits S seconds
for the search indexer first). Usage: scripts/memory-bound.py target/release/audithook
Needs curl. Prints the RSS after ingest and the peak during the reads."""
import json, os, subprocess, sys, tempfile, threading, time, urllib.request, signal
binp = sys.argv[1]
d = tempfile.mkdtemp(prefix="audithook-mem-")
env = dict(os.environ, AUDITHOOK_DATABASE_URL=f"sqlite://{d}/a.db", AUDITHOOK_HOOK_TOKEN="h"*20,
           AUDITHOOK_API_TOKEN="r"*20, AUDITHOOK_LISTEN="127.0.0.1:18181", RUST_LOG="warn",
           AUDITHOOK_MAX_EXPORTS="16")
p = subprocess.Popen([binp, "serve"], env=env)
time.sleep(1.5)
base = "http://127.0.0.1:18181"
filler = "x" * 1_000_000
for i in range(200):
    body = json.dumps({"_id": f"big{i:04}", "date": 1700000000000 + i, "kind": "flag", "name": "n", "comment": filler}).encode()
    req = urllib.request.Request(base + "/hooks/launchdarkly", data=body, headers={"Authorization": "Bearer " + "h"*20, "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
def rss():
    with open(f"/proc/{p.pid}/status") as f:
        for l in f:
            if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
peak = [rss()]
base_rss = peak[0]
stop = False
def sampler():
    while not stop:
        peak[0] = max(peak[0], rss()); time.sleep(0.05)
t = threading.Thread(target=sampler); t.start()
procs = []
mode = os.environ.get("MODE", "all")
time.sleep(float(os.environ.get("SETTLE", "0")))
base_rss = rss()
peak[0] = base_rss
if mode in ("all", "export"):
  for i in range(8):
    procs.append(subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--limit-rate", "2M", "-H", "Authorization: " + "r"*20, base + "/export.ndjson"]))
if mode in ("all", "list"):
  for i in range(8):
    procs.append(subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-H", "Authorization: " + "r"*20, base + "/api/v2/auditlog?limit=1000"]))
if mode in ("all", "queue"):
  for i in range(8):
    procs.append(subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-H", "Authorization: " + "r"*20, base + f"/queue/c{i}?limit=1000"]))
time.sleep(20)
for pr in procs: pr.kill()
stop = True; t.join()
print(f"events: 200 x 1 MB; 8 slow NDJSON exports (2 MB/s) + 8 listings limit=1000 + 8 queue reads limit=1000")
print(f"RSS after ingest {base_rss} MB, peak during reads {peak[0]} MB")
p.send_signal(signal.SIGTERM); p.wait()
