"""The benchmark scripts, also runnable as modules: `python -m benchmarks.bench_generate`.

They import their shared `harness` by its plain name, as they do when run as files (their folder is then
sys.path[0]); run as modules, this puts the folder there.
"""

import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
