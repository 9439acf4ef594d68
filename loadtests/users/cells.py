"""The cells a simulated user runs: a weighted mix of trivial, printing, plotting and pandas cells.

Pure data and functions (no locust here), so the mix is tested as data and shared by every user class.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    kind: str
    code: str
    weight: int


MIX: tuple[Cell, ...] = (
    Cell("trivial", "1 + 1", 4),
    Cell("print", "for _i in range(5):\n    print('line', _i)", 2),
    Cell(
        "pandas",
        "import pandas as pd\n_df = pd.DataFrame({'a': range(200), 'b': range(200)})\n_df.describe()",
        2,
    ),
    Cell(
        "plot",
        "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
        "import matplotlib.pyplot as plt\nplt.figure(figsize=(3, 2))\nplt.plot([1, 3, 2])\nplt.show()",
        1,
    ),
)


def pick(rng: random.Random, mix: tuple[Cell, ...] = MIX) -> Cell:
    return rng.choices(mix, weights=[c.weight for c in mix], k=1)[0]


def make_state_cell(marker: str) -> str:
    """The cell that gives a session something to lose: a variable holding the user's marker."""
    return f"skg_user_state = {marker!r}"


STATE_CHECK = "print(globals().get('skg_user_state', 'SKG-STATE-LOST'))"


def state_kept(stdout: str, marker: str) -> bool:
    return stdout.strip() == marker
