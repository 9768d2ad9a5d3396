"""`BrokerWatch`: a live run's view of whether the brokers answer, kept in a thread of its own.

The flow's thread waits in the sink's flush for as long as the brokers are away, so the watch
cannot live there: it asks for metadata every second, sets `omnitrigger_brokers_reachable`, and
logs one line when the brokers went away and one when they are back, with the outage's length
(docs/monitoring.md). runner/process.py starts it with each live process.
"""

from __future__ import annotations

import logging
import threading
import time

from omnitrigger import metrics
from omnitrigger.config import Config
from omnitrigger.io.kafka_tools import client_settings

log = logging.getLogger("omnitrigger.live")  # the logger the log lines name (docs/monitoring.md)


class BrokerWatch:
    """Asks the brokers for metadata every `interval_s` in a daemon thread, whatever the flow is doing.

    Sets `omnitrigger_brokers_reachable`; logs one line when the brokers stop answering (at that time) and
    one when they answer again, with the outage's length; and lets the client log throttles report what they
    held back (`jsonlog.Throttle`). `state()` tells the source whether an outage is under way and how many
    there were.
    """

    def __init__(self, brokers: str, config: Config, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.brokers = brokers
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.down_since: float | None = None  # monotonic time of the first probe that failed
        self.outages = 0  # how many began
        self._stop = threading.Event()
        silent = logging.getLogger("omnitrigger.kafka.watch")  # the outage is reported once, here, not per retry
        silent.addHandler(logging.NullHandler())
        silent.propagate = False
        self._client = AdminClient(client_settings(brokers, config, **{
            "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000))}), logger=silent)
        metrics.BROKERS_REACHABLE.set(1)  # preflight has just reached them

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def state(self) -> tuple[bool, int]:
        """(brokers away now, outages so far): what the source asks (flows/kafka_source.py)."""
        return self.down_since is not None, self.outages

    def probe(self) -> bool:
        """One metadata request: do the brokers answer within `timeout_s`?"""
        from confluent_kafka import KafkaException

        try:
            metadata = self._client.list_topics(timeout=self.timeout_s)
        except KafkaException:
            return False
        return bool(metadata.brokers)

    def check(self) -> None:
        """Probe once and update the gauge and the log."""
        started = time.monotonic()
        reachable = self.probe()
        if not reachable and self.down_since is None:
            self.down_since = started
            self.outages += 1
            metrics.BROKERS_REACHABLE.set(0)
            log.warning("brokers unreachable; waiting for them (nothing is lost: reading resumes at the same "
                        "offsets, outputs wait for acknowledgement)", extra={"fields": {
                            "brokers": self.brokers, "probe_timeout_s": self.timeout_s}})
        elif reachable and self.down_since is not None:
            from omnitrigger.jsonlog import Throttle

            outage_s = round(time.monotonic() - self.down_since, 1)
            self.down_since = None
            metrics.BROKERS_REACHABLE.set(1)
            log.warning("brokers reachable again; resumed", extra={"fields": {
                "brokers": self.brokers, "outage_s": outage_s}})
            Throttle.flush_all(force=True)  # what the clients repeated during the outage, counted

    def start(self) -> "BrokerWatch":
        def loop() -> None:
            from omnitrigger.jsonlog import Throttle

            while not self._stop.is_set():
                started = time.monotonic()
                self.check()
                Throttle.flush_all()
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

        threading.Thread(target=loop, name="omnitrigger-broker-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
