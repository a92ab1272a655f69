"""Task registry. Importing this package registers every built-in task."""

from latentreason.tasks import countdown, gsm8k, prosqa  # noqa: F401  (registration side effect)
from latentreason.tasks.base import ANSWER_MARKER, TASKS, Example, Task, get_task, register_task

__all__ = ["ANSWER_MARKER", "TASKS", "Example", "Task", "get_task", "register_task"]
