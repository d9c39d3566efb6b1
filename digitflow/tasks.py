"""Task names, queue names and routes: the one table every service reads.

Services never import each other; they agree on these strings. The gateway starts a chain
``preprocess.run -> inference.run -> postprocess.run`` by name.
"""

from __future__ import annotations

from typing import Final

PREPROCESS: Final = "preprocess.run"
INFERENCE: Final = "inference.run"
POSTPROCESS: Final = "postprocess.run"

STAGES: Final = ("preprocess", "inference", "postprocess")
TASK_OF_STAGE: Final = {"preprocess": PREPROCESS, "inference": INFERENCE, "postprocess": POSTPROCESS}
# Queue names equal stage names: `celery ... worker -Q inference` scales exactly one stage.
QUEUE_OF_STAGE: Final = {stage: stage for stage in STAGES}
ROUTES: Final = {task: {"queue": QUEUE_OF_STAGE[stage]} for stage, task in TASK_OF_STAGE.items()}
