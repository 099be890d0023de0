"""Progress lines through Python's ``logging``: one per block, from the actors and the driver.

distglm logs under the ``distglm`` logger and, as a library, leaves its configuration to the
application: nothing is printed unless the application enables INFO for it. The ``distglm``
command and the entrypoint of submitted jobs do, so ``ray job logs ID`` and ``distglm logs ID``
show a fit's progress. Actors log at the level the driver enabled when the fit started.
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER_NAME", "log_to_stderr", "enabled_level"]

LOGGER_NAME = "distglm"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_stderr(level: int | str = logging.INFO) -> logging.Logger:
    """Send distglm's log records of ``level`` and above to stderr (once per process).

    Examples
    --------
    >>> log_to_stderr("WARNING").name
    'distglm'
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(handler, "_distglm", False) for handler in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._distglm = True
        logger.addHandler(handler)
    # printed once, here: not again by handlers the host process (a Ray worker) put on the root
    logger.propagate = False
    logger.setLevel(level)
    return logger


def enabled_level() -> int | None:
    """The level at which this process logs distglm's progress (INFO or finer), else None.

    Examples
    --------
    >>> import logging
    >>> logging.getLogger("distglm").setLevel(logging.WARNING)
    >>> enabled_level() is None
    True
    """
    logger = logging.getLogger(LOGGER_NAME)
    return logger.getEffectiveLevel() if logger.isEnabledFor(logging.INFO) else None
