"""DeepRoom voice: WebRTC (aiortc, Opus) between participants, placed in space.

Small rooms use a direct mesh; teaching rooms a forwarding SFU (Janus VideoRoom),
switched live. Signalling goes through the relay's "signal" events; ICE offers
only the host addresses we choose (127.0.0.1 by default) and uses no ICE servers.
What is heard is mixed to stereo by a numpy spatial mixer at each speaker's pose.
"""

from __future__ import annotations

from deeproom.net.voice.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    ArrayTrack,
    FrameRecorder,
    SilenceTrack,
    ToneTrack,
    dominant_hz,
    read_wav,
    rms,
    write_wav,
)
from deeproom.net.voice.errors import (
    NamespaceError,
    NoAudioDevice,
    SfuError,
    SignalError,
    VoiceError,
)
from deeproom.net.voice.ice import LOOPBACK, host_addresses, set_host_addresses
from deeproom.net.voice.local import LocalVoice, TalkMode
from deeproom.net.voice.session import VoiceConfig, VoiceSession
from deeproom.net.voice.signalling import (
    MemorySignalHub,
    RelaySignalling,
    SignalTransport,
    VoiceSignal,
)
from deeproom.net.voice.spatial import DistanceModel, SpatialMixer, stereo_gains

__all__ = [
    "FRAME_SAMPLES",
    "LOOPBACK",
    "SAMPLE_RATE",
    "ArrayTrack",
    "DistanceModel",
    "FrameRecorder",
    "LocalVoice",
    "MemorySignalHub",
    "NamespaceError",
    "NoAudioDevice",
    "RelaySignalling",
    "SfuError",
    "SignalError",
    "SignalTransport",
    "SilenceTrack",
    "SpatialMixer",
    "TalkMode",
    "ToneTrack",
    "VoiceConfig",
    "VoiceError",
    "VoiceSession",
    "VoiceSignal",
    "dominant_hz",
    "host_addresses",
    "read_wav",
    "rms",
    "set_host_addresses",
    "stereo_gains",
    "write_wav",
]
