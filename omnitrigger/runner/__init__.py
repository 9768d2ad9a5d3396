"""Running the flow (replay and live): the state folder, the dataflow, one process or a cluster, the outputs."""
