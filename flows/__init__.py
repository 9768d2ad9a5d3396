"""Bytewax wiring, kept thin: sources, the stage wrapper, sinks, and the flow builders.

Operator logic lives in operators/ and knows nothing of Bytewax; this folder
only decides what runs where. `replay_flow.build_flow` assembles the
dataflow from any source and sink, so tests run it with their own.
"""
