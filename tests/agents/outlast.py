"""Agent that outlasts a fault: says it waits, waits for the file $GO, says so again, exits 0."""
import os
import time

print("agent: waiting", flush=True)
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.05)
print("agent: done", flush=True)
