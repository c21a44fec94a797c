# Times machine.succeed("true") round trips through the bridge and the agent.
import time
machine.start()
samples = []
for _ in range(int(os.environ.get("HUTCH_BENCH_CALLS", "300"))):
    t0 = time.perf_counter()
    machine.succeed("true")
    samples.append(time.perf_counter() - t0)
samples.sort()
print(f"ROUND_TRIP median_ms={samples[len(samples) // 2] * 1e3:.3f} p95_ms={samples[int(len(samples) * 0.95)] * 1e3:.3f}")
