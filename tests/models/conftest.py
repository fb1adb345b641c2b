"""Engine tests run on few threads: the machine is shared and the models are tiny."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
