"""omnitrigger: a real-time omnichannel trigger engine on Bytewax, Kafka and RocksDB."""

from omnitrigger import _moved

__version__ = "0.4.0"

_moved.install()
