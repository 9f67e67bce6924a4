"""Agent for the console's browser tests: prints what it was asked, then sleeps $NAP seconds."""
import os
import time

print(f"agent output: hello from the agent ({os.environ.get('ROUTINELY_TEXT', 'no text')})", flush=True)
nap = float(os.environ.get("NAP", "0"))
if nap:
    print("agent: napping", flush=True)
    time.sleep(nap)
print("agent: done", flush=True)
