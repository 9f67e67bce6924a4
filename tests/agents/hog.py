"""A hostile agent, bounded: HOG=pids|memory|disk|none. Each stops by itself at a fixed
ceiling far past the limits the tests set, so a broken limit shows as a test failure, not a
lost host. HOG_MARKER tags the processes it leaves (`sleep MARKER`)."""
import os
import subprocess
import sys
import time

kind = os.environ.get("HOG", "none")
marker = os.environ.get("HOG_MARKER", "77.5")
if kind == "pids":
    started = refused = 0
    for _ in range(3000):  # a few thousand sleepers at most, never unbounded
        try:
            subprocess.Popen(["sleep", marker], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            started += 1
        except OSError as exc:
            refused += 1
            if refused == 1:
                print(f"hog: fork refused: {exc}", flush=True)
    print(f"hog: started {started}, refused {refused}", flush=True)
    sys.exit(0)
if kind == "memory":
    chunks = []
    for i in range(2048):  # 2 GB at most
        chunks.append(os.urandom(1) * (1 << 20))
        if i % 64 == 0:
            print(f"hog: {i} MB", flush=True)
    print("hog: allocated everything", flush=True)
    sys.exit(0)
if kind == "disk":
    block = os.urandom(1 << 20)
    with open("hog.bin", "wb") as f:
        for i in range(400):  # 400 MB at most
            f.write(block)
            f.flush()
            time.sleep(0.02)
    print("hog: wrote everything", flush=True)
    time.sleep(30)
    sys.exit(0)
subprocess.Popen(["sleep", marker], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
total = sum(i * i for i in range(200_000))
print(f"honest: done {total}", flush=True)
