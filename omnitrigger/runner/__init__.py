"""Running the flow, replay and live alike: a run reads in one direction, step by step.

    run_replay (replay.py)            run_live (live.py)
    the recording, stores, key and    the stores, key, brokers and
    every output path checked         topics checked (preflight)
                  │                                │
                  ▼                                ▼
    1. prepare the state folder       state_folder.py   layout.json checked or written, the folder
                                                        locked, the recovery store and RocksDB opened
    2. build the flow                 process.py        a `ProcessSpec` (spec.py) a process to run
                                                        here; its source and sink around
                                                        flows/replay_flow.py `build_flow`
    3. run it                         process.py        in this process (`run_process`; cluster.py:
                                                        as one process of a Bytewax cluster), or
                                      local_cluster.py  as a one-machine cluster: one child
                                                        process a spec, each running `run_process`
    4. finish the outputs             finish.py         replay: the part files merged into the
                                                        output files, the summary; live: nothing
                                                        (its outputs are on the topics already)

The front doors (replay.py, live.py) call the steps in that order and nothing calls back: a
step's module never imports a front door. What goes from a front door to each process is one
`ProcessSpec`, a frozen dataclass (JSON on a child's stdin). errors.py lists the errors a run
reports in one line; broker_watch.py is a live process's watch on the brokers.

Imports point one way: omnitrigger.cli -> omnitrigger.runner -> omnitrigger.flows ->
omnitrigger.operators -> omnitrigger.state, and each of those may use omnitrigger.io (recordings,
Kafka, the output files), which imports none of them but omnitrigger.state (the order key's end, a state error).
"""
