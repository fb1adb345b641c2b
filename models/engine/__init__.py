"""The one engine service: whoever brings a model, a dataset or a run into a room hosts it here.

- `EngineService` (service.py): hosts models, declares each panel's actions, serves "steer"
  requests through the analysis registry (`deeproom.models.tasks`) and the job runner, streams
  progress, publishes result panels placed by `deeproom.placement.free_slot`.
- `ClientLink` / `SessionLink` (link.py): the engine's own participant on a relay, or the app's session.
- `ModelsHost` / `DemoHost` (hosts.py): what `deeproom open` and `deeproom demo` host.
See docs/engine.md ("Engine service", "Actions").
"""

from deeproom.models.engine.link import ClientLink, EngineLink, SessionLink
from deeproom.models.engine.service import EngineService, Hosted, Request

__all__ = ["ClientLink", "EngineLink", "EngineService", "Hosted", "Request", "SessionLink"]
