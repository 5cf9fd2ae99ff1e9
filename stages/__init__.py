"""The DVC stages, one module per stage of dvc.yaml, run as `python -m stages.<name>`.

One BLAS thread unless the environment sets another count, before any stage imports numpy: the
heads' logistic regressions multiply small matrices, where OpenBLAS's hand-off between threads costs
more than it saves (an EfficientNet head on 528 screenshots: 3.4 s of CPU at one thread, 112 s at two
on the loaded 2-vCPU host), and a fit no longer depends on the machine's core count. Torch keeps its
own thread settings.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
