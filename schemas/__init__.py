"""The v1 event contracts: JSON Schema files plus the fast decoder built from them.

`*.schema.json` here are the source of truth for every topic, the stores file
and every output; `validator.py` compiles them; `contracts.py` applies them to
records and parses event time.
"""

from omnitrigger.schemas.contracts import INPUT_TOPICS, OPTIONAL_INPUT_TOPICS, Contracts, parse_event_time
from omnitrigger.schemas.validator import SCHEMA_DIR, ContractViolation

__all__ = ["INPUT_TOPICS", "OPTIONAL_INPUT_TOPICS", "Contracts", "ContractViolation", "SCHEMA_DIR", "parse_event_time"]
