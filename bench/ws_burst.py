"""How many WebSocket messages a dashboard tab receives during a burst of orders, and whether the page stays
responsive. Not part of the test suite; what it samples: docs/10-design-notes.md, "The dashboard under a burst".

    .venv/bin/python bench/ws_burst.py --url http://127.0.0.1:8000 --orders 5000   # against a running `make run`
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

from playwright.sync_api import sync_playwright

PROBE = """
(() => {
  const probe = (window.benchProbe = { frames: 0, maxGap: 0, longTasks: 0, longTaskMs: 0, last: performance.now() });
  const tick = (now) => {
    probe.frames += 1;
    probe.maxGap = Math.max(probe.maxGap, now - probe.last);
    probe.last = now;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      probe.longTasks += 1;
      probe.longTaskMs += entry.duration;
    }
  }).observe({ entryTypes: ["longtask"] });
})();
"""

SAMPLE = """
() => {
  const p = window.benchProbe, live = window.orderpipeLive || { messages: 0, bytes: 0 };
  const text = (id) => Number((document.getElementById(id).textContent || "0").replace(/,/g, "")) || 0;
  const sample = {
    t: performance.now(), messages: live.messages, bytes: live.bytes, frames: p.frames, maxGap: p.maxGap,
    longTasks: p.longTasks, longTaskMs: p.longTaskMs, accepted: text("n-accepted"),
    terminal: text("count-completed") + text("count-failed") + text("count-dead_lettered"),
  };
  p.maxGap = 0;
  return sample;
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--username", default="demo")
    parser.add_argument("--password", default="orderpipe-demo")
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--json", action="store_true", help="print the per-second samples as JSON too")
    args = parser.parse_args()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.chromium,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=args.url)
        page.goto("/admin/login/?next=/")
        page.get_by_label("Username").fill(args.username)
        page.get_by_label("Password").fill(args.password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{args.url}/")
        page.locator("#live-status[data-state=live]").wait_for()
        page.evaluate(PROBE)
        page.wait_for_timeout(1000)
        start = page.evaluate(SAMPLE)
        base_accepted, base_terminal = start["accepted"], start["terminal"]

        page.get_by_label("Orders in burst").fill(str(args.orders))
        page.get_by_role("button", name="Place burst").click()
        samples = [start]
        began = time.monotonic()
        while time.monotonic() - began < args.max_seconds:
            page.wait_for_timeout(1000)
            samples.append(page.evaluate(SAMPLE))
            last = samples[-1]
            done = last["terminal"] - base_terminal
            print(
                f"\r{time.monotonic() - began:6.1f} s  accepted {last['accepted'] - base_accepted:>6}  "
                f"terminal {done:>6}  ws msgs {last['messages'] - start['messages']:>5}",
                end="",
                file=sys.stderr,
            )
            if last["accepted"] - base_accepted >= args.orders and done >= args.orders:
                break
        print(file=sys.stderr)
        browser.close()

    per_second = []
    for before, after in itertools.pairwise(samples):
        seconds = (after["t"] - before["t"]) / 1000
        per_second.append(
            {
                "messages": (after["messages"] - before["messages"]) / seconds,
                "kbytes": (after["bytes"] - before["bytes"]) / seconds / 1024,
                "fps": (after["frames"] - before["frames"]) / seconds,
                "max_frame_gap_ms": after["maxGap"],
            }
        )
    end = samples[-1]
    elapsed = (end["t"] - start["t"]) / 1000
    summary = {
        "orders": args.orders,
        "seconds": round(elapsed, 1),
        "accepted": end["accepted"] - base_accepted,
        "terminal": end["terminal"] - base_terminal,
        "ws_messages": end["messages"] - start["messages"],
        "ws_messages_per_s_mean": round(statistics.mean(s["messages"] for s in per_second), 2),
        "ws_messages_per_s_max": round(max(s["messages"] for s in per_second), 2),
        "ws_kbytes_per_s_mean": round(statistics.mean(s["kbytes"] for s in per_second), 1),
        "fps_mean": round(statistics.mean(s["fps"] for s in per_second), 1),
        "fps_min": round(min(s["fps"] for s in per_second), 1),
        "max_frame_gap_ms": round(max(s["max_frame_gap_ms"] for s in per_second), 1),
        "long_tasks": end["longTasks"] - start["longTasks"],
        "long_task_ms_total": round(end["longTaskMs"] - start["longTaskMs"], 1),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(per_second, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
