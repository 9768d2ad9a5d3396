"""omnitrigger: a real-time omnichannel trigger engine on Bytewax, Kafka and RocksDB."""

__version__ = "0.4.0"
