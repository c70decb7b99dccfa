"""Make docs/dashboard.png, the README's picture of the dashboard, with the browser tests' own code
(tests/browser.py): the default digits job (20 non-IID clients, 10 a round, FedAvg) for 25 rounds with a seeded 10%
of replies lost, shown by `fedloop dashboard`, in headless Chromium.

    python scripts/dashboard_screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import chart_points, missing, open_page, screenshot, wait_for  # noqa: E402

from fedloop.build import (  # noqa: E402  # noqa: E402
    load_config,
    load_data,
    loss_from_config,
    model_fn_from_config,
    partition_from_config,
    run_options,
    strategy_from_config,
)
from fedloop.config import to_toml  # noqa: E402
from fedloop.dashboard import Dashboard  # noqa: E402
from fedloop.data.examples import Examples  # noqa: E402
from fedloop.experiment import build_fleet, partition_json  # noqa: E402
from fedloop.run import train  # noqa: E402
from fedloop.sim import ChaosFleet  # noqa: E402


def main() -> None:
    if (why := missing()) is not None:
        sys.exit(f"cannot take the screenshot: {why}")
    cfg = load_config(None, ["rounds=25"])
    data = load_data(cfg)
    part = partition_from_config(cfg, data)
    model_fn = model_fn_from_config(cfg, data.spec())
    strategy = strategy_from_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "digits-fedavg"
        fleet = ChaosFleet(build_fleet(data, part, strategy, model_fn, loss_from_config(cfg)), drop=0.1, seed=1)
        train(fleet, model_fn, strategy, run_options(cfg, out=out), test=Examples.all(data.x_test, data.y_test),
              partition_json=partition_json(data, part), config_toml=to_toml(cfg))
        board = Dashboard(out, port=0).start()
        driver = open_page(board.url)
        try:
            wait_for(driver, lambda d: chart_points(d, "accuracy") == 25, what="25 rounds")
            path = screenshot(driver, ROOT / "docs" / "dashboard.png")
        finally:
            driver.quit()
            board.stop()
    print(f"-> {path}")


if __name__ == "__main__":
    main()
