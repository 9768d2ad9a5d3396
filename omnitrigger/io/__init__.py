"""What the flow reads and writes outside itself: recordings, Kafka, the reference files and the output files.

    recording.py    a recording folder (kcat's JSON envelope or bare JSON lines) read as streams, one a
                    (file, partition), each record decoded, checked and stamped with its order key
    live_input.py   Kafka messages decoded as a replay decodes lines, and partitions merged in event time
    kafka_tools.py  topic names, client settings and the start-up checks shared by `run`, `record`, `publish`
    kafka_mock.py   librdkafka's mock cluster (ctypes), for tests and benchmarks
    outputs.py      a replay's part files, their manifest, and their checked merge into the output files
    stores.py       the stores file (`--stores`)
    catalog.py      the product catalogue (`--catalog`)

Nothing here imports the flow, the runner or the CLI: flows/ wraps these in Bytewax sources and sinks
(flows/recording_source.py, flows/kafka_source.py, flows/kafka_sink.py, flows/part_file_sink.py), and the
runner (omnitrigger/runner/) opens and finishes them. These modules lived at the top of the
package before (`omnitrigger.recording`, ...); omnitrigger/_moved.py keeps those names importable.
"""
