"""Frames/s of ``dreamer-dynamics play`` in a real page, and the time from a key press to its frame.

The quickstart-sized model (``dreamer_dynamics/configs/quickstart.yaml`` sizes on the built-in world; speed
does not depend on the weights, so an untrained export is used unless ``--source`` names a checkpoint or
export) is served by the real console script; headless Chromium (scripts/install_browser.sh) loads the page.
For each K the page runs uncapped for ``--seconds`` and the frames it drew are counted; then the arrow key is
pressed ``--presses`` times and the page's own key -> frame times (keydown to the drawn frame made with that
action) are collected. Browser and server share the machine, as in use.

    python -m benchmarks.play_speed                  # ~1 minute
    python -m benchmarks.play_speed --threads 2 --source runs/.../last.ckpt

Prints a table and writes benchmarks/results/play_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR

REPO = Path(__file__).resolve().parent.parent


def quickstart_export(directory: Path) -> Path:
    """An untrained quickstart-sized model for the built-in world, exported with the dataset's codec."""
    import torch

    from dreamer_dynamics.data.building.worlds import builtin_dataset_root
    from dreamer_dynamics.data.reading.dataset import LatentDataset
    from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer

    data = LatentDataset(builtin_dataset_root(progress=False))
    config = DynamicsConfig.quickstart(num_discrete_actions=data.num_discrete_actions)  # built-in world
    torch.manual_seed(0)
    return DynamicsTransformer(config).save_pretrained(directory, codec=data.meta.codec)


def start_server(source: Path, threads: int) -> tuple[subprocess.Popen, str]:
    script = Path(sys.executable).parent / "dreamer-dynamics"
    cmd = [str(script), "play", str(source), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"play did not start: {line}")
    return proc, line.split(" at ")[1].split()[0]


def browser():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_browser.sh")], capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"no browser: {result.stderr.strip()}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def frames_per_second(driver, k: int, seconds: float) -> float:
    """Frames the page drew at K = k per second, over `seconds` after a 1 s warm-up."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//button[text()='K={k}']").click()
    time.sleep(1.0)
    start = driver.execute_script("return performance.now()")
    time.sleep(seconds)
    script = "return window.play.history.filter(e => e.time >= arguments[0] && e.k === arguments[1])"
    times = [e["time"] for e in driver.execute_script(script, start, k)]
    return 1000.0 * (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def key_latencies(driver, presses: int) -> list[float]:
    """Milliseconds from keydown to the drawn frame made with that key, as the page measures them."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("window.play.latencies = []")
    for i in range(presses):
        key = Keys.ARROW_RIGHT if i % 2 == 0 else Keys.ARROW_LEFT
        ActionChains(driver).key_down(key).perform()
        time.sleep(0.25)
        ActionChains(driver).key_up(key).perform()
        time.sleep(0.15)
    return driver.execute_script("return window.play.latencies")


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.source) if args.source else quickstart_export(Path(tmp) / "quickstart")
        proc, url = start_server(source, args.threads)
        driver = browser()
        try:
            driver.get(url)
            deadline = time.monotonic() + 60
            while not driver.execute_script("return window.play && window.play.frames > 3"):
                if time.monotonic() > deadline:
                    raise SystemExit("the page drew no frames in 60 s")
                time.sleep(0.2)
            fps = {k: frames_per_second(driver, k, args.seconds) for k in args.k}
            driver.find_element("xpath", "//button[text()='K=4']").click()
            latencies = key_latencies(driver, args.presses)
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "source": args.source or "untrained quickstart-sized export",
        "server_threads": args.threads,
        "frames_per_second": {str(k): round(v, 1) for k, v in fps.items()},
        "key_to_frame_ms": {
            "median": round(statistics.median(latencies), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
            "count": len(latencies),
        },
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", help="checkpoint or export to serve (default: quickstart-sized, untrained)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4], help="K values to measure")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per K")
    parser.add_argument("--presses", type=int, default=10, help="key presses for the key -> frame time")
    result = run(parser.parse_args(argv))
    print("K   frames/s")
    for k, v in result["frames_per_second"].items():
        print(f"{k:<3} {v}")
    lat = result["key_to_frame_ms"]
    print(f"key -> frame: median {lat['median']} ms, max {lat['max']} ms over {lat['count']} presses")
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "play_speed.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
