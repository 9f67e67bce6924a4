"""Agent that starts a child, says so, and sleeps: for timeouts, cancel and killed workers."""
import os
import subprocess
import sys
import time

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["REPORT"], "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
print("agent: sleeping", flush=True)
time.sleep(600)
