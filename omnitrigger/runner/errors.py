"""The errors a run reports as one line (`omnitrigger: error: ...`, exit 1), never as a traceback.

Each module raises its own (a config, a recording, the state folder, a cluster address, ...);
`USER_ERRORS` lists them for the two places that turn them into that line: the CLI
(omnitrigger/cli/__init__.py) and a one-machine cluster's child process (runner/local_cluster.py).
"""

from __future__ import annotations

from omnitrigger.io.catalog import CatalogError
from omnitrigger.config import ConfigError
from omnitrigger.io.kafka_tools import KafkaSetupError
from omnitrigger.io.outputs import OutputError
from omnitrigger.pii import PiiKeyError
from omnitrigger.io.recording import RecordingError
from omnitrigger.runner.cluster import ClusterError
from omnitrigger.state import StateError
from omnitrigger.io.stores import StoresError


class ReplayError(Exception):
    """The replay cannot run as asked; the message is one line for the user."""


USER_ERRORS = (CatalogError, ClusterError, ConfigError, KafkaSetupError, OutputError, PiiKeyError, RecordingError,
               ReplayError, StateError, StoresError)
