"""Voice activity: is the local speaker talking? Energy with an adaptive noise floor.

A frame counts as speech when its level is well above the running noise floor and
above an absolute minimum; the speaking flag turns on after a short run of speech
frames and off after a hangover, so it does not flicker between words.
"""

from __future__ import annotations

import math

import numpy as np


class VoiceActivity:
    def __init__(
        self,
        *,
        min_dbfs: float = -45.0,
        above_floor_db: float = 9.0,
        attack_frames: int = 2,
        hangover_frames: int = 15,
    ) -> None:
        self.min_dbfs = min_dbfs
        self.above_floor_db = above_floor_db
        self.attack = attack_frames
        self.hangover = hangover_frames
        self.floor_db = -60.0
        self.speaking = False
        self._run = 0
        self._quiet = 0

    def update(self, samples: np.ndarray) -> bool:
        """Feed one frame; returns the speaking flag after it."""
        x = np.asarray(samples, dtype=np.float64)
        level = 10 * math.log10(float(np.mean(x * x)) + 1e-12)
        speech = level > self.min_dbfs and level > self.floor_db + self.above_floor_db
        if not speech:
            # the floor follows quiet frames quickly, and rises slowly otherwise
            self.floor_db += (level - self.floor_db) * (0.2 if level < self.floor_db else 0.02)
        if speech:
            self._run += 1
            self._quiet = 0
            if self._run >= self.attack:
                self.speaking = True
        else:
            self._run = 0
            self._quiet += 1
            if self._quiet > self.hangover:
                self.speaking = False
        return self.speaking
